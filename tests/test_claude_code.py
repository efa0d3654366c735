"""The real Claude Code CLI (npm @anthropic-ai/claude-code, installed by tests/run.sh) validates the
plugin, and the command names it loads are the ones README's table promises for each way of installing.

Claude Code runs in a network namespace of its own (`unshare -rn`: only a loopback, down), with a
HOME and temp folder in tmp_path and a made-up API key: nothing leaves the machine, nothing of the
user's Claude Code is read. The names come from the first event of `claude -p --output-format
stream-json`, which lists the session's slash commands before any request is tried.
"""

import json
import os
import re
import subprocess
import threading

import pytest

from bak.cli import cli
from conftest import REPO, need, run_cli

COMMANDS = sorted(cli.commands)


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
