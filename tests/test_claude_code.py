"""The real Claude Code CLI (npm @anthropic-ai/claude-code, installed by tests/run.sh) validates the
plugin, loads the command names README's table promises for each way of installing, and runs only the
read-only forms of bak's scripts without asking.

Claude Code runs in a network namespace of its own (`unshare -rn`), with a HOME and temp folder in
tmp_path and a made-up API key: nothing leaves the machine, nothing of the user's Claude Code is read.
The names come from the first event of `claude -p --output-format stream-json`, which lists the session's
slash commands before any request is tried. What it runs comes from a session against a stand-in for the
API on the namespace's loopback (fake_anthropic.py), which plays the model: it asks for the command
lines a prompt gives, and Claude Code runs them, or refuses what needs the user's yes.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bak.cli import cli
from conftest import REPO, need, run_cli, write_config

COMMANDS = sorted(cli.commands)
STAND_IN = Path(__file__).with_name("fake_anthropic.py")
ASKS = "This command requires approval"  # Claude Code's answer, in -p mode, to what is not pre-approved


@pytest.fixture
def claude(tmp_path, monkeypatch):
    need("claude", "unshare")
    home = tmp_path / "home"
    (tmp_path / "claude-tmp").mkdir()
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # for `bak skill install`, in-process
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE", "ANTHROPIC", "BAK_"))}
    env.update(HOME=str(home), CLAUDE_CODE_TMPDIR=str(tmp_path / "claude-tmp"), TMPDIR=str(tmp_path / "claude-tmp"),
               DISABLE_TELEMETRY="1",
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1",
               ANTHROPIC_API_KEY="sk-ant-test-offline-not-a-key")

    class Claude:
        def run(self, *args, cwd=tmp_path):
            return subprocess.run(["unshare", "-rn", "claude", *args], cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=120, stdin=subprocess.DEVNULL)

        def session(self, prompt: str, plan: list[dict], cwd=tmp_path, bak_env: dict | None = None) -> "Session":
            """`claude -p PROMPT` against the stand-in model, which makes the tool calls of `plan` in turn."""
            plan_file, log = tmp_path / "plan.json", tmp_path / "requests.jsonl"
            plan_file.write_text(json.dumps(plan))
            log.write_text("")
            out = subprocess.run(["unshare", "-rn", sys.executable, str(STAND_IN), str(plan_file), str(log), "--",
                                  "claude", "-p", "--output-format", "stream-json", "--verbose", prompt],
                                 cwd=cwd, env={**env, **(bak_env or {})}, capture_output=True, text=True, timeout=170,
                                 stdin=subprocess.DEVNULL)
            events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            assert events and events[-1]["type"] == "result", out.stdout[-2000:] + out.stderr[-2000:]
            return Session(events, [json.loads(line) for line in log.read_text().splitlines()])

        def slash_commands(self, cwd=tmp_path) -> set[str]:
            proc = subprocess.Popen(["unshare", "-rn", "claude", "-p", "--output-format", "stream-json", "--verbose",
                                     "list"], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            watchdog = threading.Timer(60, proc.kill)
            watchdog.start()
            try:
                first = json.loads(proc.stdout.readline())
            finally:
                watchdog.cancel()
                proc.kill()
                proc.communicate()
            assert first["type"] == "system" and first["subtype"] == "init", first
            return set(first["slash_commands"])

    return Claude()


class Session:
    """What one `claude -p` session did: each tool call with Claude Code's answer, and the API requests."""

    def __init__(self, events: list[dict], requests: list[dict]):
        self.requests = requests
        self.calls: list[tuple[dict, str]] = []
        answers = {c["tool_use_id"]: c for e in events if e["type"] == "user"
                   for c in (e["message"]["content"] if isinstance(e["message"]["content"], list) else [])
                   if c.get("type") == "tool_result"}
        for event in events:
            for block in event["message"]["content"] if event["type"] == "assistant" else []:
                if block["type"] == "tool_use":
                    answer = answers.get(block["id"], {}).get("content", "")
                    text = answer if isinstance(answer, str) else "".join(a.get("text", "") for a in answer)
                    self.calls.append((block["input"], text))

    def prompt(self) -> str:
        """The command's prompt as Claude Code expanded it (its substitutions made), as the model got it."""
        from fake_anthropic import texts

        return texts(self.requests[0])


def promised_names() -> dict[str, set[str]]:
    """README's table: for each way of installing (by its first command), the names it promises."""
    promised = {}
    for row in re.findall(r"^\| `([^`]+)`.*$", (REPO / "README.md").read_text(), re.M):
        line = next(l for l in (REPO / "README.md").read_text().splitlines() if l.startswith(f"| `{row}`"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 3 or "bak-status" not in cells[2]:
            continue
        skill = re.search(r"`/([^`]+)`", cells[1]).group(1)
        prefix = re.search(r"`/([^`]*)bak-status`", cells[2]).group(1)
        promised[row] = {skill} | {f"{prefix}bak-{c}" for c in COMMANDS}
    return promised


def test_plugin_validate_passes_strictly(claude):
    for target in (".", ".claude-plugin/plugin.json"):
        out = claude.run("plugin", "validate", "--strict", target, cwd=REPO)
        assert out.returncode == 0 and "Validation passed" in out.stdout, out.stdout + out.stderr


def test_readme_promises_a_name_for_every_command_in_each_way():
    promised = promised_names()
    assert len(promised) == 3, promised
    assert {"backup-skill:bak-status", "backup-skill:backup-skill"} <= promised[
        "claude plugin marketplace add /path/to/bak"]
    assert "bak-status" in promised["python3 scripts/bak_skill.py install"]
    skill = (REPO / "SKILL.md").read_text()  # the agent's own page says the same
    assert "`/backup-skill:bak-status`" in skill and "`/backup-skill:backup-skill`" in skill
    assert "`/bak-status` ... `/bak-wizard` and `/backup-skill`" in skill


def test_as_a_plugin_every_command_is_namespaced_as_the_docs_say(claude):
    assert claude.run("plugin", "marketplace", "add", str(REPO)).returncode == 0
    installed = claude.run("plugin", "install", "backup-skill@bak")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    names = claude.slash_commands()
    assert promised_names()["claude plugin marketplace add /path/to/bak"] <= names
    assert not {f"bak-{c}" for c in COMMANDS} & names  # never the plain names: plugins are namespaced


def test_after_bak_skill_install_the_plain_names_are_there(claude, tmp_path):
    assert run_cli("skill", "install").code == 0
    assert promised_names()["python3 scripts/bak_skill.py install"] <= claude.slash_commands()


def test_after_a_project_install_the_plain_names_are_there_in_that_project_only(claude, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    assert run_cli("skill", "install", "--project", str(project)).code == 0
    promised = promised_names()["python3 scripts/bak_skill.py install --project DIR"]
    assert promised <= claude.slash_commands(cwd=project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert not promised & claude.slash_commands(cwd=elsewhere)


# --- what Claude Code runs without asking ------------------------------------------------------------
IRREVERSIBLE = ["bootstrap", "pg", "prune", "restore", "ssh"]  # disable-model-invocation: the user types them


def tiny_lab(root: Path) -> dict:
    """One PostgreSQL target with three dumps on a folder destination; the environment the agent's shell gets."""
    from bak import naming

    folder = root / "backups" / "postgresql" / "db"
    folder.mkdir(parents=True)
    now = datetime.now().replace(microsecond=0)
    for hours in (1, 7, 13):
        name = naming.pg_dump_name("app", now - timedelta(hours=hours))
        (folder / name).write_bytes(b"dump")
        (folder / f"{name}.sha256").write_text(f"{__import__('hashlib').sha256(b'dump').hexdigest()}  {name}\n")
    (root / "settings").mkdir()
    (root / "settings" / "settings.json").write_text("{}\n")
    write_config(root / "config.yaml", {
        "version": 1, "state_dir": "state",
        "destinations": {"here": {"kind": "local", "path": str(root / "backups")}},
        "policies": {"one": {"keep_last": 1}},
        "targets": [{"name": "db", "method": "pg_dump", "destinations": ["here"], "policy": "one", "interval": "6h",
                     "pg_dump": {"database": "app"}},
                    {"name": "conf", "method": "config", "destinations": ["here"], "interval": "1d",
                     "config": {"source": str(root / "settings")}}]})
    assert run_cli("create", "--target", "conf", "--config", str(root / "config.yaml")).code == 0
    # The shell Claude Code starts finds this interpreter (bak's dependencies installed) first.
    return {"BAK_CONFIG": str(root / "config.yaml"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def envelope_of(answer: str) -> dict:
    """The script's envelope in a Bash tool result (Claude Code puts "Exit code N" first when it is not 0)."""
    return json.loads(answer.split("\n", 1)[1] if answer.startswith("Exit code") else answer)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_only_the_read_only_forms_run_without_asking(claude, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    assert run_cli("skill", "install", "--project", str(project)).code == 0
    lab = tiny_lab(tmp_path / "lab")
    before = files_under(tmp_path / "lab" / "backups")

    prune = claude.session("/bak-prune", [{"tool": "Bash", "args": a} for a in
                                          ("--dry-run", "", "--force", "--target db --force", "--simulate --keep-last 1 --every 1d --days 3")],
                           cwd=project, bak_env=lab)
    (dry, planned), *refused, (_, simulated) = prune.calls
    assert dry["command"].endswith('/scripts/bak_prune.py" --dry-run')
    assert envelope_of(planned)["result"]["targets"][0]["removed"] == 2  # it ran, and planned to remove two
    assert envelope_of(simulated)["result"]["kept"] == 1
    assert [answer for _, answer in refused] == [ASKS] * 3  # deleting waits for the user's yes
    restore = claude.session("/bak-restore --target conf", [{"tool": "Bash", "args": "--dry-run --target conf"},
                                                           {"tool": "Bash", "args": "--target conf"}],
                             cwd=project, bak_env=lab)
    (_, plan), (_, asked) = restore.calls
    assert envelope_of(plan)["result"]["dry_run"] is True and asked == ASKS
    schedule = claude.session("/bak-schedule", [{"tool": "Bash", "args": "install --dry-run"},
                                                {"tool": "Bash", "args": "install"}], cwd=project, bak_env=lab)
    assert envelope_of(schedule.calls[0][1])["result"]["dry_run"] is True and schedule.calls[1][1] == ASKS
    assert files_under(tmp_path / "lab" / "backups") == before


def test_as_a_plugin_too_deleting_waits_for_the_user(claude, tmp_path):
    assert claude.run("plugin", "marketplace", "add", str(REPO)).returncode == 0
    assert claude.run("plugin", "install", "backup-skill@bak").returncode == 0
    lab = tiny_lab(tmp_path / "lab")
    before = files_under(tmp_path / "lab" / "backups")
    session = claude.session("/backup-skill:bak-prune", [{"tool": "Bash", "args": "--dry-run"},
                                                        {"tool": "Bash", "args": ""}], bak_env=lab)
    (_, planned), (_, asked) = session.calls
    assert envelope_of(planned)["command"] == "prune" and asked == ASKS
    assert files_under(tmp_path / "lab" / "backups") == before


def test_a_project_install_copied_elsewhere_works_there(claude, tmp_path):
    first = tmp_path / "first" / "project"
    first.mkdir(parents=True)
    assert run_cli("skill", "install", "--project", str(first)).code == 0
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(first, moved, symlinks=True)
    shutil.rmtree(tmp_path / "first")  # nothing may point back to where it was installed
    (moved / "docs").mkdir()
    assert promised_names()["python3 scripts/bak_skill.py install --project DIR"] <= claude.slash_commands(cwd=moved)
    lab = tiny_lab(tmp_path / "lab")
    for cwd in (moved, moved / "docs"):  # a session started in the project, or in a folder of it
        session = claude.session("/bak-status", [{"tool": "Bash", "args": ""}], cwd=cwd, bak_env=lab)
        ((call, answer),) = session.calls
        assert str(moved / ".claude" / "skills") in call["command"] and str(first) not in session.prompt()
        envelope = envelope_of(answer)
        assert envelope["command"] == "status" and [t["target"] for t in envelope["result"]["targets"]] == ["db", "conf"]


def test_the_model_cannot_invoke_irreversible_commands_on_its_own(claude, tmp_path):
    assert run_cli("skill", "install").code == 0
    plan = [{"tool": "Skill", "input": {"skill": f"bak-{c}"}} for c in [*IRREVERSIBLE, "status"]]
    session = claude.session("tidy up my backups and fix what you find", plan)
    answers = [answer for _, answer in session.calls]
    assert all("disable-model-invocation" in a for a in answers[:-1]), answers
    assert answers[-1] == "Execute skill: bak-status"  # a read-only one it may start itself


def test_skill_install_refuses_while_the_plugin_is_on(claude, tmp_path):
    assert claude.run("plugin", "marketplace", "add", str(REPO)).returncode == 0
    assert claude.run("plugin", "install", "backup-skill@bak").returncode == 0
    refused = run_cli("skill", "install")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "plugin_installed"
    assert "claude plugin uninstall backup-skill@bak" in refused.envelope["errors"][0]["hint"]
    assert not (tmp_path / "home" / ".claude" / "skills" / "bak-status").exists()
    assert claude.run("plugin", "uninstall", "backup-skill@bak").returncode == 0
    assert run_cli("skill", "install").code == 0
    names = claude.slash_commands()
    assert "bak-status" in names and not any(n.startswith("backup-skill:") for n in names)
