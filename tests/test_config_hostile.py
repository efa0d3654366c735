"""A config that says two things, or says a secret, is refused without repeating it (issue 30, items 4 and 7)."""

import pytest

from conftest import run_cli


def lab_text(home, extra: str = "") -> str:
    (home / "src").mkdir(exist_ok=True)
    return (f"version: 1\n"
            f"destinations:\n  here:\n    kind: local\n    path: {home / 'dest'}\n"
            f"targets:\n  - name: files\n    method: rsync\n    destinations: [here]\n"
            f"    rsync:\n      source: {home / 'src'}\n" + extra)


# --- duplicate keys (item 7) ---------------------------------------------------------------------
@pytest.mark.parametrize("text, key, lines", [
    # a stray second `targets: []` at the end would silently drop every target
    (lambda home: lab_text(home, "targets: []\n"), "targets", (6, 12)),
    # a doubled `path:` would send the backups elsewhere
    (lambda home: lab_text(home).replace("    kind: local\n", f"    kind: local\n    path: {home / 'other'}\n"),
     "path", (5, 6)),
])
def test_a_key_written_twice_is_refused_with_both_lines(bak_home, text, key, lines):
    (bak_home / "config.yaml").write_text(text(bak_home))
    for command in (["config", "check"], ["status"], ["create", "--dry-run"]):
        result = run_cli(*command)
        assert result.code == 2, (command, result.envelope)
        error = result.envelope["errors"][0]
        assert error["code"] == "config_invalid"
        assert f"key {key!r} appears twice" in error["message"]
        assert f"line {lines[0]} and on line {lines[1]}" in error["message"], error["message"]
        assert error["where"].endswith(f"config.yaml:{lines[1]}:{5 if key == 'path' else 1}"), error["where"]
    assert not (bak_home / "dest").exists() and not (bak_home / "other").exists()


def test_keys_that_yaml_reads_alike_are_duplicates_and_aliases_are_not(bak_home):
    (bak_home / "config.yaml").write_text(lab_text(bak_home, "notify:\n  events: [failure]\n  'events': [space]\n"))
    result = run_cli("config", "check")
    assert result.code == 2 and "'events' appears twice" in result.envelope["errors"][0]["message"]
    # one anchor used twice is one mapping read twice, not a key written twice
    text = lab_text(bak_home).replace("    rsync:\n", "    rsync: &opts\n") + \
        "  - name: again\n    method: rsync\n    destinations: [here]\n    rsync: *opts\n"
    (bak_home / "config.yaml").write_text(text)
    assert run_cli("config", "check").code == 0


def test_wizard_answers_with_a_key_written_twice_write_nothing(bak_home):
    answers = bak_home / "answers.yaml"
    answers.write_text(f"destinations:\n  local: {{kind: local, path: {bak_home / 'b'}}}\n"
                       f"folders:\n  - {{name: docs, path: {bak_home}}}\nfolders: []\n")
    result = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(bak_home / "out.yaml"))
    assert result.code == 2 and "'folders' appears twice" in result.envelope["errors"][0]["message"]
    assert not (bak_home / "out.yaml").exists()
