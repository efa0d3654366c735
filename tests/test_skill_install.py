"""`bak skill install` writes the layout Claude Code reads for plain, unnamespaced names.

Claude Code's docs (https://code.claude.com/docs/en/skills, "Where skills live"): a personal skill is
~/.claude/skills/<name>/SKILL.md, a project one <dir>/.claude/skills/<name>/SKILL.md, and a file at
.claude/commands/<name>.md creates /<name> (custom commands are merged into skills) in the same two
scopes; only a plugin's skills and commands are namespaced, /<plugin>:<name>.
"""

import subprocess
import sys

import pytest

from bak.cli import cli
from conftest import run_cli

COMMANDS = sorted(cli.commands)


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    return folder


def test_user_install_gives_the_personal_layout_and_a_working_copy(home, tmp_path):
    result = run_cli("skill", "install")
    assert result.code == 0, result.envelope
    root = home / ".claude"
    skill = root / "skills" / "backup-skill"
    assert result.envelope["result"]["commands"] == [f"/bak-{c}" for c in COMMANDS]
    assert sorted(p.name for p in (root / "commands").iterdir()) == [f"bak-{c}.md" for c in COMMANDS]
    assert (skill / "SKILL.md").read_text().startswith("---\nname: backup-skill\n")
    assert not (skill / ".claude-plugin").exists()  # a plugin manifest there would namespace it again
    prompt = (root / "commands" / "bak-status.md").read_text()
    assert "${CLAUDE_PLUGIN_ROOT}" not in prompt  # set for plugins only: written out as the skill folder
    assert f"allowed-tools: Bash(python3 {skill}/scripts/bak_status.py:*)" in prompt
    assert f"python3 {skill}/scripts/bak_status.py $ARGUMENTS" in prompt
    # The copy runs on its own, from any folder, wherever the clone goes afterwards.
    out = subprocess.run([sys.executable, str(skill / "scripts" / "bak_status.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Usage: bak status" in out.stdout, out.stderr


def test_install_is_idempotent_and_never_overwrites_a_foreign_file(home):
    assert run_cli("skill", "install").code == 0
    again = run_cli("skill", "install").envelope["result"]
    assert again["written"] == 0 and again["unchanged"] > 0
    mine = home / ".claude" / "commands" / "bak-status.md"
    mine.write_text("my own /bak-status, not bak's\n")
    refused = run_cli("skill", "install")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "would_overwrite"
    assert str(mine) in refused.envelope["errors"][0]["message"]
    assert mine.read_text() == "my own /bak-status, not bak's\n"

    removed = run_cli("skill", "install", "--uninstall")
    assert removed.code == 0 and removed.envelope["result"]["kept"] == [str(mine)]
    assert mine.exists() and not (home / ".claude" / "skills" / "backup-skill").exists()
    assert sorted(p.name for p in (home / ".claude" / "commands").iterdir()) == ["bak-status.md"]
    assert run_cli("skill", "install", "--uninstall").envelope["result"]["removed"] == 0


def test_a_foreign_skill_of_the_same_name_is_left_alone(home):
    theirs = home / ".claude" / "skills" / "backup-skill" / "SKILL.md"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("---\nname: backup-skill\ndescription: someone else's\n---\n")
    result = run_cli("skill", "install")
    assert result.code == 3 and not (home / ".claude" / "commands").exists()
    assert theirs.read_text().endswith("someone else's\n---\n")


def test_project_install_writes_only_inside_the_project(home, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    result = run_cli("skill", "install", "--project", str(project))
    assert result.code == 0 and result.envelope["result"]["scope"] == "project"
    assert (project / ".claude" / "commands" / "bak-wizard.md").is_file()
    assert (project / ".claude" / "skills" / "backup-skill" / "SKILL.md").is_file()
    assert not (home / ".claude").exists()
    assert run_cli("skill", "install", "--project", str(tmp_path / "nowhere")).code == 2
