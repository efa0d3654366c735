"""Where a restore may go (issue 30, items 2 and 3): never over the root, a system folder or a home, a forced
restore's dry run says what it deletes, and no path reaches a tool as an option."""

import os
import shlex
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bak.methods import docker_volume, pg_dump, rsync
from conftest import run_cli, write_config
from test_hostile_input import lab


@pytest.fixture
def backed_up(bak_home, monkeypatch):
    monkeypatch.chdir(bak_home)
    lab(bak_home)
    (bak_home / "src" / "sub").mkdir()
    (bak_home / "src" / "sub" / "b.txt").write_text("b")
    assert run_cli("create").code == 0
    return bak_home


# --- item 2: the root, system folders, a home ---------------------------------------------------------
def system_places(home: Path) -> list[str]:
    (home / "to-root").symlink_to("/")
    return ["/", "/etc", "/usr", "/var", "/home", str(Path.home()), "/tmp/..", "//", "/usr/./bin/", str(home / "to-root"),
            "/proc/self/cwd", "/sys/kernel", "/dev/shm"]


def test_a_restore_never_replaces_the_root_a_system_folder_or_a_home(backed_up):
    for place in system_places(backed_up):
        # The dry run first: on a bak that would accept it, the test stops here, before any real restore.
        planned = run_cli("restore", "--target", "files", "--into", place, "--force", "--dry-run")
        assert planned.code == 3, (place, planned.envelope)
        error = planned.envelope["errors"][0]
        assert error["code"] == "system_folder" and "never restores into it" in error["message"], error
        real = run_cli("restore", "--target", "files", "--into", place, "--force")
        assert real.code == 3 and real.envelope["errors"][0]["code"] == "system_folder"
    assert not list((backed_up / "dest").glob("safety/*/*")), "no safety snapshot: nothing was about to be replaced"


def test_the_dry_run_of_a_forced_restore_says_what_it_deletes_and_how_many(backed_up):
    live = backed_up / "live"
    (live / "sub").mkdir(parents=True)
    (live / "a.txt").write_text("changed")
    for name in ("notes.md", "sub/draft.txt", "sub/old.txt"):
        (live / name).write_text("not in the backup")
    (live / "keep.tmp").write_text("excluded: rsync --delete spares it")
    data = yaml.safe_load((backed_up / "config.yaml").read_text())
    data["targets"][0]["rsync"]["excludes"] = ["*.tmp"]
    write_config(backed_up / "config.yaml", data)
    planned = run_cli("restore", "--target", "files", "--into", str(live), "--force", "--dry-run")
    assert planned.code == 0, planned.envelope
    checks = planned.envelope["result"]["checks"]
    assert checks["deletes"] == 3 and checks["deleted"] == ["notes.md", "sub/draft.txt", "sub/old.txt"]
    assert f"replaces {live}: 3 file(s) and folder(s) there that are not in the backup will be DELETED" in checks["effect"]
    assert sorted(p.name for p in live.rglob("*")) == ["a.txt", "draft.txt", "keep.tmp", "notes.md", "old.txt", "sub"]
    done = run_cli("restore", "--target", "files", "--into", str(live), "--force")
    assert done.code == 0 and done.envelope["result"]["deleted"] == 3
    assert sorted(str(p.relative_to(live)) for p in live.rglob("*")) == ["a.txt", "keep.tmp", "sub", "sub/b.txt"]
    # Nothing is deleted when everything there is in the backup, and the dry run says so too.
    again = run_cli("restore", "--target", "files", "--into", str(live), "--force", "--dry-run")
    assert again.envelope["result"]["checks"]["deletes"] == 0
    assert "nothing there is deleted" in again.envelope["result"]["checks"]["effect"]


def test_a_forced_restore_into_something_that_is_not_a_folder_is_refused(backed_up):
    target = backed_up / "a-file"
    target.write_text("precious")
    result = run_cli("restore", "--target", "files", "--into", str(target), "--force")
    assert result.code == 3 and "is not a folder" in result.envelope["errors"][0]["message"]
    assert target.read_text() == "precious"


# --- item 3: option injection ------------------------------------------------------------------------------
@pytest.mark.parametrize("into", ["--exclude=zz", "--delete", "-x", "--files-from=/etc/passwd", "relative/folder"])
def test_into_a_name_that_looks_like_an_option_is_refused_and_creates_nothing(backed_up, into):
    before = sorted(os.listdir(backed_up))
    for extra in (["--dry-run"], []):
        result = run_cli("restore", "--target", "files", f"--into={into}", *extra)
        assert result.code == 2, (into, result.envelope)
        assert "not an absolute path" in result.envelope["errors"][0]["message"]
    assert sorted(os.listdir(backed_up)) == before


def test_a_tree_whose_names_start_with_a_dash_is_backed_up_and_restored_whole(bak_home, monkeypatch):
    monkeypatch.chdir(bak_home)
    lab(bak_home)
    for name in ("--delete", "-x", "--exclude=a.txt"):
        (bak_home / "src" / name).mkdir()
        (bak_home / "src" / name / "f").write_text(name)
    assert run_cli("create").code == 0
    into = bak_home / "-restored"
    result = run_cli("restore", "--target", "files", "--into", str(into))
    assert result.code == 0, result.envelope
    assert sorted(p.name for p in into.iterdir()) == ["--delete", "--exclude=a.txt", "-x", "a.txt"]
    assert run_cli("verify").code == 0 and run_cli("drill").code == 0


paths = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=30)


def positional_paths_follow_double_dash(argv: list[str], paths_given: list[str]) -> None:
    """Every path is an operand after `--`, never an element a tool could read as an option."""
    assert "--" in argv, argv
    cut = argv.index("--")
    assert argv[cut + 1:] == paths_given, argv
    assert not [a for a in argv[:cut] if a in paths_given and a.startswith("-")], argv


@settings(max_examples=300, deadline=None)
@given(source=paths, dest=paths, link=paths, exclude=paths)
def test_rsync_argv_never_reads_a_path_as_an_option(source, dest, link, exclude):
    argv = rsync.rsync_argv(source, dest, link_dest=link, excludes=[exclude], delete=True, ssh="ssh -p 2")
    positional_paths_follow_double_dash(argv, [source, dest])
    assert f"--link-dest={link}" in argv and f"--exclude={exclude}" in argv  # option=value: one word, never split


@settings(max_examples=200, deadline=None)
@given(path=paths, database=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True))
def test_pg_restore_argv_never_reads_a_path_as_an_option(path, database):
    argv = pg_dump.restore_argv({"address": "127.0.0.1", "port": 5432, "database": "x"}, database, jobs=2, path=path)
    positional_paths_follow_double_dash(argv, [path])
    assert argv[argv.index("-d") + 1] == database


@settings(max_examples=200, deadline=None)
@given(mountpoint=paths)
def test_find_and_tar_argv_never_read_a_mountpoint_as_an_option(mountpoint):
    for argv in (docker_volume.listing_argv(mountpoint), docker_volume.checksums_argv(mountpoint),
                 docker_volume.emptying_argv(mountpoint)):
        assert not argv[1].startswith("-") and argv[1].endswith(mountpoint), argv  # find has no `--`: ./-x
    for argv in (docker_volume.tar_create_argv(mountpoint, True), docker_volume.tar_extract_argv(mountpoint, False)):
        assert argv[argv.index("-C") + 1] == mountpoint  # the argument of -C, whatever it starts with


def test_a_remote_command_line_keeps_a_dash_path_one_operand():
    from bak.run.ssh import SSHRunner

    runner = SSHRunner.__new__(SSHRunner)
    line = runner.command_line(rsync.rsync_argv("--delete/", "-x/"))
    assert shlex.split(line)[-3:] == ["--", "--delete/", "-x/"]
