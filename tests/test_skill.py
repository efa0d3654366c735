"""The Claude Code skill package: SKILL.md validates, commands/scripts/table match the CLI both ways."""

import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from bak.cli import cli
from bak.config import schema
from bak.config.reference import render
from conftest import REPO

COMMANDS = sorted(cli.commands)


def frontmatter(path):
    text = path.read_text()
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert match, f"{path} has no frontmatter"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_skill_md_passes_the_agent_skills_validator(tmp_path):
    from skills_ref.validator import validate

    meta, body = frontmatter(REPO / "SKILL.md")
    copy = tmp_path / meta["name"]
    copy.mkdir()
    shutil.copy(REPO / "SKILL.md", copy / "SKILL.md")
    assert validate(copy) == []
    assert len(body.splitlines()) < 500
    assert set(meta) <= {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}


def test_every_cli_command_has_a_prompt_a_script_and_a_table_row_and_the_reverse():
    skill_rows = set(re.findall(r"^\| `/bak-([a-z-]+)` \| `scripts/bak_([a-z_]+)\.py`", (REPO / "SKILL.md").read_text(), re.M))
    prompts = {p.stem.removeprefix("bak-") for p in (REPO / "commands").glob("bak-*.md")}
    scripts = {p.stem.removeprefix("bak_") for p in (REPO / "scripts").glob("bak_*.py")}
    assert prompts == set(COMMANDS)
    assert scripts == set(COMMANDS)
    assert skill_rows == {(c, c) for c in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS)
def test_prompt_frontmatter_names_only_its_own_script(command):
    meta, body = frontmatter(REPO / "commands" / f"bak-{command}.md")
    assert meta["description"] and meta["argument-hint"]
    assert len(meta["description"]) < 60  # the plugin-dev frontmatter reference: longer is cut in /help
    script = f'python3 "${{CLAUDE_PLUGIN_ROOT}}/scripts/bak_{command}.py"'
    assert all(rule.startswith(f"Bash({script}") for rule in allowed_rules(meta.get("allowed-tools")))
    assert f"{script} $ARGUMENTS" in body


# --- what a prompt pre-approves ----------------------------------------------------------------------
# Claude Code's own reading of `allowed-tools` (claude 2.1.197, the version tests/run.sh installs; its bundled
# JavaScript): VN splits the list on commas and spaces outside parentheses; a Bash rule is a legacy prefix
# (`cmd:*`: the command, or it followed by a space), else a wildcard pattern when it holds a `*` (T6: `*` is
# any text, newlines too; a single trailing ` *` also matches nothing), else an exact command.
def allowed_rules(value) -> list[str]:
    rules, current, depth = [], "", False
    for text in [value] if isinstance(value, str) else value or []:
        for char in text + " ":
            if char == "(":
                depth = True
            elif char == ")":
                depth = False
            if char in ", " and not depth:
                if current.strip():
                    rules.append(current.strip())
                current = ""
            else:
                current += char
    return rules


def pre_approves(rule: str, command: str) -> bool:
    match = re.fullmatch(r"Bash\((.*)\)", rule, re.S)
    if not match:
        return rule == "Bash"
    pattern = match.group(1).strip()
    if pattern.endswith(":*"):
        prefix = pattern[:-2]
        return command == prefix or command.startswith(prefix + " ")
    if "*" not in pattern:
        return command == pattern
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    if pattern.count("*") == 1 and pattern.endswith(" *"):
        regex = regex[: -len(re.escape(" ") + ".*")] + "( .*)?"
    return re.fullmatch(regex, command, re.S) is not None


# For each script, forms that change or remove something (each must wait for the user's yes), and forms
# that only read (the prompt promises them without asking).
CHANGES = {
    "prune": ["", "--target db", "--force", "--target db --force", "--safety-older-than 30d", "--all"],
    "restore": ["--target db", "--target db --force", "--target db --into app --force", "--target db --file x"],
    "pg": ["restore --target db", "restore --target db --force", "dump", "drill"],
    "create": ["", "--target db", "--schedule nightly"],
    "drill": ["", "--target db"],
    "dr": ["drill", "plan --runbook /etc/motd.md", "plan --config x --runbook r.md"],
    "sync": ["--to offsite", "--to offsite --target db"],
    "schedule": ["install", "remove", "install --crontab-file /etc/cron.d/bak", "remove --unit-dir d"],
    "destination": ["init offsite"],
    "bootstrap": ["--from /mnt/nfs", "--from /mnt/nfs --force", "--from u@h:/x --fingerprint SHA256:x"],
    "ssh": ["trust pve", "trust pve --fingerprint SHA256:x", "trust pve --replace"],
    "skill": ["install", "install --project /p", "install --uninstall"],
    "wizard": ["setup --answers a.yaml", "setup --answers a.yaml --force --output /etc/bak.yaml"],
    "report": ["--html /etc/motd", "--days 3 --html x.html"],
    "metrics": ["--textfile /etc"],
    "demo": ["--install-missing", "--dir /tmp/x --install-missing"],
}
READS = {
    "status": ["", "--config c.yaml"], "list": ["", "--target db --limit 5"], "log": ["", "--kind prune"],
    "verify": ["", "--all-backups"], "doctor": [""], "discover": [""], "config": ["check", "reference"],
    "prune": ["--dry-run", "--dry-run --target db --force", "--simulate --keep-last 2 --every 1d"],
    "restore": ["--dry-run --target db"], "pg": ["verify", "restore --dry-run --target db"], "create": ["--dry-run"],
    "dr": ["plan"], "schedule": ["show", "install --dry-run", "remove --dry-run"], "sync": ["--dry-run --to offsite"],
    "ssh": ["check"], "wizard": ["strategy"], "report": [""], "metrics": [""], "demo": [""],
}
DISABLED_FOR_THE_MODEL = {"bootstrap", "pg", "prune", "restore", "ssh"}  # effects that cannot be undone


def invocation(command: str, args: str, quoted: bool = True) -> str:
    script = "${CLAUDE_PLUGIN_ROOT}/scripts/bak_" + command + ".py"
    return f'python3 {shlex.quote(script) if not quoted else chr(34) + script + chr(34)}' + (f" {args}" if args else "")


@pytest.mark.parametrize("page", ["SKILL.md", *(f"commands/bak-{c}.md" for c in COMMANDS)])
def test_no_destructive_form_is_pre_approved(page):
    rules = allowed_rules(frontmatter(REPO / page)[0].get("allowed-tools"))
    for command, forms in CHANGES.items():
        for args in forms:
            for line in (invocation(command, args), invocation(command, args, quoted=False),
                         invocation(command, args).replace('"', "")):
                for tail in ("", " --json", "; rm -rf ~", "\nrm -rf ~"):
                    assert not any(pre_approves(rule, line + tail) for rule in rules), f"{page} pre-approves {line + tail}"
    if page != "SKILL.md":
        command = page.removeprefix("commands/bak-").removesuffix(".md")
        for args in READS.get(command, []):  # what the prompt says it runs at once does run at once
            assert any(pre_approves(rule, invocation(command, args)) for rule in rules), (page, args)


def test_skill_md_pre_approves_exactly_the_commands_read_only_forms():
    skill = set(allowed_rules(frontmatter(REPO / "SKILL.md")[0]["allowed-tools"]))
    prompts = {rule for c in COMMANDS for rule in allowed_rules(frontmatter(REPO / "commands" / f"bak-{c}.md")[0]
                                                               .get("allowed-tools"))}
    assert skill == prompts


def test_irreversible_commands_are_closed_to_the_model_and_say_how_to_dry_run():
    for command in COMMANDS:
        meta, body = frontmatter(REPO / "commands" / f"bak-{command}.md")
        assert bool(meta.get("disable-model-invocation")) == (command in DISABLED_FOR_THE_MODEL), command
    assert "--dry-run" in frontmatter(REPO / "commands" / "bak-prune.md")[0]["argument-hint"]
    assert "--force" not in frontmatter(REPO / "commands" / "bak-ssh.md")[1]  # ssh has --replace, no --force
    assert "--replace" in frontmatter(REPO / "commands" / "bak-ssh.md")[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_script_help_exits_0_from_any_folder(command, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / f"bak_{command}.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


def test_a_script_prints_json_and_never_prompts(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bak_prune.py"), "--simulate", "--keep-last", "2",
                          "--every", "1d", "--days", "5"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0
    import json

    assert json.loads(out.stdout)["result"]["kept"] == 2


def test_config_reference_matches_the_schema():
    assert (REPO / "references" / "config.md").read_text() == render(schema()) + "\n"
    from bak.config.reference import SECTIONS

    assert SECTIONS == list(schema()["properties"])  # every top-level key has its section, in order


def test_references_over_100_lines_start_with_a_table_of_contents():
    """skill-creator's rule for references the agent loads on demand: it reads the contents first."""
    for page in sorted((REPO / "references").glob("*.md")):
        lines = page.read_text().splitlines()
        if len(lines) > 100:
            head = "\n".join(lines[:12])
            assert "Contents" in head and head.count("](#") >= 3, page.name


def test_plugin_manifest_names_the_skill():
    import json

    plugin = json.loads((REPO / ".claude-plugin" / "plugin.json").read_text())
    meta, _ = frontmatter(REPO / "SKILL.md")
    assert plugin["name"] == meta["name"]
    market = json.loads((REPO / ".claude-plugin" / "marketplace.json").read_text())
    assert market["plugins"][0]["name"] == meta["name"]


def test_references_named_in_skill_md_exist():
    text = (REPO / "SKILL.md").read_text()
    for ref in re.findall(r"`(references/[a-z-]+\.md)`", text):
        assert (REPO / ref).is_file(), ref
