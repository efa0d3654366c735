"""`bak skill install` writes the layout Claude Code reads for plain, unnamespaced names.

Claude Code's docs (https://code.claude.com/docs/en/skills, "Where skills live"): a personal skill is
~/.claude/skills/<name>/SKILL.md, a project one <dir>/.claude/skills/<name>/SKILL.md (custom commands are
merged into skills); only a plugin's skills and commands are namespaced, /<plugin>:<name>. Each of bak's
commands is a skill of its own, its paths relative to its folder (tests/test_claude_code.py runs them with
the real CLI, after moving the project).
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
    assert sorted(p.name for p in (root / "skills").iterdir()) == sorted(["backup-skill", *(f"bak-{c}" for c in COMMANDS)])
    assert (skill / "SKILL.md").read_text().startswith("---\nname: backup-skill\n")
    assert not (skill / ".claude-plugin").exists()  # a plugin manifest there would namespace it again
    assert not (root / "commands").exists()  # each command is a skill: only skills get ${CLAUDE_SKILL_DIR}
    prompt = (root / "skills" / "bak-status" / "SKILL.md").read_text()
    assert "${CLAUDE_PLUGIN_ROOT}" not in prompt and str(home) not in prompt  # no absolute path: it may move
    assert 'Bash(python3 "${CLAUDE_SKILL_DIR}/../backup-skill/scripts/bak_status.py" *)' in prompt
    assert 'python3 "${CLAUDE_SKILL_DIR}/../backup-skill/scripts/bak_status.py" $ARGUMENTS' in prompt
    assert 'Bash(python3 "${CLAUDE_SKILL_DIR}/scripts/bak_list.py" *)' in (skill / "SKILL.md").read_text()
    # The copy runs on its own, from any folder, wherever the clone goes afterwards.
    out = subprocess.run([sys.executable, str(skill / "scripts" / "bak_status.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Usage: bak status" in out.stdout, out.stderr


def test_install_is_idempotent_and_never_overwrites_a_foreign_file(home):
    assert run_cli("skill", "install").code == 0
    again = run_cli("skill", "install").envelope["result"]
    assert again["written"] == 0 and again["unchanged"] > 0
    mine = home / ".claude" / "skills" / "bak-status" / "SKILL.md"
    mine.write_text("my own /bak-status, not bak's\n")
    refused = run_cli("skill", "install")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "would_overwrite"
    assert str(mine) in refused.envelope["errors"][0]["message"]
    assert mine.read_text() == "my own /bak-status, not bak's\n"

    removed = run_cli("skill", "install", "--uninstall")
    assert removed.code == 0 and removed.envelope["result"]["kept"] == [str(mine)]
    assert mine.exists() and not (home / ".claude" / "skills" / "backup-skill").exists()
    assert sorted(p.name for p in (home / ".claude" / "skills").iterdir()) == ["bak-status"]
    assert run_cli("skill", "install", "--uninstall").envelope["result"]["removed"] == 0


def test_an_install_of_the_old_layout_is_replaced(home):
    """bak 0.1 wrote each prompt to .claude/commands/ with absolute paths; a new install removes those it
    recorded (unchanged since), so no command is loaded twice."""
    import hashlib
    import json

    old = home / ".claude" / "commands" / "bak-status.md"
    old.parent.mkdir(parents=True)
    old.write_text("---\ndescription: old\n---\npython3 /somewhere/scripts/bak_status.py $ARGUMENTS\n")
    record = home / ".claude" / "skills" / "backup-skill" / ".bak-install.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"version": "0.1.0", "files": {
        "commands/bak-status.md": hashlib.sha256(old.read_bytes()).hexdigest()}}))
    result = run_cli("skill", "install")
    assert result.code == 0 and result.envelope["result"]["removed"] == 1
    assert not old.exists() and (home / ".claude" / "skills" / "bak-status" / "SKILL.md").is_file()


def test_a_foreign_skill_of_the_same_name_is_left_alone(home):
    theirs = home / ".claude" / "skills" / "backup-skill" / "SKILL.md"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("---\nname: backup-skill\ndescription: someone else's\n---\n")
    result = run_cli("skill", "install")
    assert result.code == 3 and not (home / ".claude" / "skills" / "bak-status").exists()
    assert theirs.read_text().endswith("someone else's\n---\n")


def test_project_install_writes_only_inside_the_project(home, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    result = run_cli("skill", "install", "--project", str(project))
    assert result.code == 0 and result.envelope["result"]["scope"] == "project"
    assert (project / ".claude" / "skills" / "bak-wizard" / "SKILL.md").is_file()
    assert (project / ".claude" / "skills" / "backup-skill" / "SKILL.md").is_file()
    assert not (home / ".claude").exists()
    assert run_cli("skill", "install", "--project", str(tmp_path / "nowhere")).code == 2
