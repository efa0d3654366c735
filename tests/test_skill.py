"""The Claude Code skill package: SKILL.md validates, commands/scripts/table match the CLI both ways."""

import re
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
    assert meta["allowed-tools"] == f"Bash(python3 ${{CLAUDE_PLUGIN_ROOT}}/scripts/bak_{command}.py:*)"
    assert "$ARGUMENTS" in body and f"scripts/bak_{command}.py" in body


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
