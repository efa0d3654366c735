"""A path the user gives bak is never clobbered (issue 30, item 1), and a fuzzer over every command's path
arguments: device files, named pipes, existing files and folders, symbolic links, `-`-leading names and `/`.

Device files are made here with mknod (the test runs as root, like the tmpfs tests): the machine's own
/dev/full and /dev/null are never handed to bak, whatever today's code would do with them.
"""

import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli, unavailable
from test_hostile_input import assert_clean, lab, leaf_commands

FUZZ = settings(max_examples=int(os.environ.get("BAK_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FULL, NULL = (1, 7), (1, 3)
PRECIOUS = b"precious: never overwritten without --force\n"


def device(path: Path, numbers=FULL) -> Path:
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(*numbers))
    except PermissionError:
        unavailable("mknod needs root (the suite runs as root, as the tmpfs tests do)")
    return path


class Hostile:
    """One of each thing a careless or hostile path may name, and a check that each is as it was."""

    KINDS = ("device", "null", "fifo", "file", "folder", "symlink", "dash", "dashes", "root")

    def __init__(self, home: Path):
        self.home = home / "hostile"
        if self.home.exists():
            shutil.rmtree(self.home)  # a fresh set for each example of a fuzzer
        self.home.mkdir()
        self.paths = {"device": device(self.home / "full"), "null": device(self.home / "null", NULL),
                      "fifo": self.home / "fifo", "file": self.home / "precious.html", "folder": self.home / "folder",
                      "symlink": self.home / "link.html"}
        os.mkfifo(self.paths["fifo"])
        self.paths["file"].write_bytes(PRECIOUS)
        self.paths["folder"].mkdir()
        (self.paths["folder"] / "inside.txt").write_bytes(PRECIOUS)
        self.paths["symlink"].symlink_to(self.paths["file"])
        self.root_entries = set(os.listdir("/"))

    def value(self, kind: str) -> str:
        return {"dash": "-x.html", "dashes": "--delete", "root": "/"}.get(kind) or str(self.paths[kind])

    def assert_untouched(self, folder_written: bool = False, file_edited: bool = False):
        """`folder_written`: the folder was given where a command writes into one (a project, a textfile folder);
        `file_edited`: the file was given where bak edits its own block in place (a crontab file)."""
        for kind, numbers in (("device", FULL), ("null", NULL)):
            info = os.lstat(self.paths[kind])
            assert stat.S_ISCHR(info.st_mode) and (os.major(info.st_rdev), os.minor(info.st_rdev)) == numbers, kind
        assert stat.S_ISFIFO(os.lstat(self.paths["fifo"]).st_mode)
        text = self.paths["file"].read_bytes()
        assert text == PRECIOUS or file_edited and text.startswith(PRECIOUS) and b"# BEGIN bak" in text, text
        assert folder_written or sorted(p.name for p in self.paths["folder"].iterdir()) == ["inside.txt"]
        assert (self.paths["folder"] / "inside.txt").read_bytes() == PRECIOUS
        assert self.paths["symlink"].is_symlink() and os.readlink(self.paths["symlink"]) == str(self.paths["file"])
        assert set(os.listdir("/")) == self.root_entries, set(os.listdir("/")) ^ self.root_entries


@pytest.fixture
def hostile(bak_home):
    return Hostile(bak_home)


class Stuck(BaseException):
    """bak blocked (on a named pipe, say): raised by the alarm, past every handler of bak's."""


@pytest.fixture
def watchdog():
    def alarm(signum, frame):
        raise Stuck("bak was still running after 30 s (blocked on a pipe or a device?)")

    previous = signal.signal(signal.SIGALRM, alarm)
    yield lambda: signal.alarm(30)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- item 1: files bak writes as a whole -------------------------------------------------------------
WRITERS = [(["report", "--html"], ".html"), (["dr", "plan", "--runbook"], ".md")]


def hostile_named(folder: Path, kind: str, suffix: str) -> Path:
    """One hostile thing whose name ends in `suffix` (a runbook must end in .md: the check must not stop there)."""
    path = folder / f"{kind}{suffix}"
    if kind in ("device", "null"):
        device(path, FULL if kind == "device" else NULL)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
        (path / "inside.txt").write_bytes(PRECIOUS)
    else:
        (folder / f"real{suffix}").write_bytes(PRECIOUS)
        if kind == "symlink":
            path.symlink_to(folder / f"real{suffix}")
        else:
            path = folder / f"real{suffix}"
    return path


def state_of(path: Path):
    info = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
    return stat.S_IFMT(info.st_mode), info.st_rdev, content, sorted(os.listdir(path)) if path.is_dir() else None


@pytest.mark.parametrize("command, suffix", WRITERS)
@pytest.mark.parametrize("kind, code", [("device", 2), ("null", 2), ("fifo", 2), ("folder", 2), ("symlink", 2),
                                        ("file", 3)])
def test_report_and_runbook_never_clobber_what_is_there(bak_home, watchdog, command, suffix, kind, code):
    lab(bak_home)
    folder = bak_home / "out"
    folder.mkdir()
    path = hostile_named(folder, kind, suffix)
    before = {p.name: state_of(p) for p in folder.iterdir()}
    watchdog()
    result = run_cli(*command, str(path))
    assert_clean(result, (code,))
    assert result.envelope["errors"][0]["code"] == ("would_overwrite" if kind == "file" else "bad_input")
    assert {p.name: state_of(p) for p in folder.iterdir()} == before
    # --force replaces a regular file only, atomically, beside it; never a device, pipe, folder or link
    forced = run_cli(*command, str(path), "--force")
    if kind == "file":
        assert forced.code in (0, 1) and path.read_bytes() != PRECIOUS, forced.envelope
        assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temp file left beside it
    else:
        assert forced.code == 2
        assert {p.name: state_of(p) for p in folder.iterdir()} == before
    new = bak_home / f"new{suffix}"
    assert run_cli(*command, str(new)).code in (0, 1) and new.stat().st_size > 0


def test_the_default_report_is_rewritten_each_time(bak_home):
    lab(bak_home)
    first = run_cli("report")
    again = run_cli("report")
    assert first.code == again.code == 0, again.envelope
    assert first.envelope["result"]["path"] == again.envelope["result"]["path"]


def test_metrics_into_a_folder_that_is_not_one_is_a_clean_error(bak_home, hostile, watchdog):
    lab(bak_home)
    watchdog()
    for folder, codes in (("/proc", (1, 2)), (str(hostile.paths["device"]), (2,)), (str(hostile.paths["fifo"]), (2,)),
                          (str(hostile.paths["file"]), (2,)), ("/proc/self", (1, 2))):
        result = run_cli("metrics", "--textfile", folder)
        assert_clean(result, codes)
        assert result.envelope["errors"][0]["code"] in ("bad_input", "write_failed"), result.envelope
    hostile.paths["folder"].joinpath("bak.prom").mkdir()
    result = run_cli("metrics", "--textfile", str(hostile.paths["folder"]))
    assert_clean(result, (2,))
    assert "bak.prom is a folder" in result.envelope["errors"][0]["message"]
    planted = not os.path.lexists("/bak.prom")
    try:
        root = run_cli("metrics", "--textfile", "/")  # as root, / is writable: never a place for bak's files
        assert_clean(root, (2,))
        assert "filesystem root" in root.envelope["errors"][0]["message"]
    finally:
        if planted and os.path.lexists("/bak.prom"):  # what a bak without the check wrote: not left on the machine
            os.unlink("/bak.prom")
    assert planted is False or not os.path.lexists("/bak.prom")


@pytest.mark.parametrize("kind", ["device", "null", "fifo"])
def test_schedule_files_that_are_devices_or_pipes_are_refused_unread(bak_home, hostile, watchdog, kind):
    lab(bak_home)
    data = (bak_home / "config.yaml").read_text() + "schedules:\n  - {name: nightly, targets: [files], cron: '0 3 * * *'}\n"
    (bak_home / "config.yaml").write_text(data)
    watchdog()
    for extra in ([], ["--dry-run"]):
        result = run_cli("schedule", "install", "--crontab-file", hostile.value(kind), *extra)
        assert_clean(result, (2,))
        assert "not a regular file" in result.envelope["errors"][0]["message"]
    hostile.assert_untouched()


def test_the_wizard_never_moves_a_device_aside(bak_home, hostile, watchdog):
    answers = bak_home / "answers.yaml"
    answers.write_text(f"destinations:\n  local: {{kind: local, path: {bak_home / 'b'}}}\n"
                       f"folders:\n  - {{name: docs, source: {bak_home}}}\n")
    watchdog()
    for kind in ("device", "null", "fifo", "folder", "symlink"):
        result = run_cli("wizard", "setup", "--answers", str(answers), "--output", hostile.value(kind), "--force")
        assert_clean(result, (2,))
    hostile.assert_untouched()
    assert not [p for p in hostile.home.iterdir() if ".bak-" in p.name]


def test_bootstrap_never_moves_a_device_where_the_config_goes(bak_home, hostile, monkeypatch, watchdog):
    monkeypatch.setenv("BAK_CONFIG", str(hostile.paths["null"]))
    (bak_home / "kit-source").mkdir()
    watchdog()
    result = run_cli("bootstrap", "--from", str(bak_home / "kit-source"), "--force")
    assert_clean(result, (2,))
    assert "not a regular file" in result.envelope["errors"][0]["message"]
    hostile.assert_untouched()


def test_a_known_hosts_that_is_a_pipe_or_device_is_a_clean_error_never_a_hang(bak_home, hostile, sshd, watchdog):
    for kind in ("fifo", "device"):
        from conftest import write_config

        write_config(bak_home / "config.yaml", {"version": 1, "hosts": {"box": sshd.host_config(hostile.paths[kind])}})
        watchdog()
        for command in (["ssh", "check"], ["ssh", "trust", "box"]):
            result = run_cli(*command)
            assert_clean(result, (1, 2))
            assert "not a regular file" in result.envelope["errors"][0]["message"], result.envelope
    hostile.assert_untouched()


# --- the fuzzer: every command's path arguments ---------------------------------------------------------
# Options that name a path but are typed as text (a restore's --into, a tree's --file, bootstrap's --from).
PATH_OPTIONS = {"into", "single_file", "source"}
# Arguments a command cannot start without, given when the draw leaves them out (values of the lab).
REQUIRED = {("restore",): ["--target", "files"], ("pg", "restore"): ["--target", "files"], ("sync",): ["--to", "here"],
            ("destination", "init"): ["here"], ("ssh", "trust"): ["box"]}


def path_params(command: click.Command) -> list[click.Parameter]:
    return [p for p in command.params if isinstance(p.type, click.Path) or p.name in PATH_OPTIONS]


def lab_defaults(home: Path, path: tuple) -> dict[str, str]:
    """Where a command writes when the draw names no path for it: inside the lab, never the user's crontab,
    ~/.claude or the real config."""
    (home / "units").mkdir(exist_ok=True)
    (home / "project").mkdir(exist_ok=True)
    (home / "kit-source").mkdir(exist_ok=True)
    answers = home / "answers.yaml"
    if not answers.exists():
        answers.write_text(f"destinations:\n  local: {{kind: local, path: {home / 'b'}}}\n"
                           f"folders:\n  - {{name: docs, source: {home / 'src'}}}\n")
    return {"crontab_file": str(home / "crontab"), "unit_dir": str(home / "units"), "task_dir": str(home / "units"),
            "project": str(home / "project"), "answers": str(answers), "output": str(home / "written.yaml"),
            "source": str(home / "kit-source")}


COMMANDS = [(path, command) for path, command in leaf_commands(__import__("bak.cli", fromlist=["cli"]).cli)
            if path_params(command)]


@st.composite
def path_vectors(draw):
    path, command = draw(st.sampled_from(COMMANDS))
    chosen = {}
    for param in path_params(command):
        if draw(st.booleans()):
            kinds = [k for k in Hostile.KINDS if not (path == ("demo",) and k in ("dash", "dashes"))]  # a new folder: a whole demo
            chosen[param.name] = draw(st.sampled_from(kinds))
    return path, command, chosen


@FUZZ
@given(vector=path_vectors())
def test_fuzz_every_path_argument_of_every_command(bak_home, monkeypatch, watchdog, vector):
    path, command, chosen = vector
    monkeypatch.chdir(bak_home)
    if not (bak_home / "config.yaml").exists():
        lab(bak_home)
        assert run_cli("create").code == 0  # a backup, so restores get as far as their paths
    hostile = Hostile(bak_home)
    for name in ("-x.html", "--delete", "written.yaml"):  # what an earlier example may have written, legitimately
        target = bak_home / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    defaults = lab_defaults(bak_home, path)
    args = [*path, *REQUIRED.get(path, [])]
    for param in path_params(command):
        value = hostile.value(chosen[param.name]) if param.name in chosen else defaults.get(param.name)
        if value is None:
            continue
        if isinstance(param, click.Argument):
            args.append(value)
        else:
            args += [f"{param.opts[0]}={value}"]  # `--into=--delete`: the value, never read as an option
    if path == ("prune",):
        args.append("--dry-run")
    before = set(os.listdir(bak_home))
    watchdog()
    result = run_cli(*args, stdin="")
    signal.alarm(0)
    assert_clean(result)
    into_folder = [p for p in path_params(command) if chosen.get(p.name) == "folder" and isinstance(p.type, click.Path)
                   and not p.type.file_okay]
    state_given = chosen.get("state_path") == "folder"  # bak's own state folder: its journal is written whatever the exit
    hostile.assert_untouched(folder_written=bool(into_folder) and result.code in (0, 1) or state_given,
                             file_edited=chosen.get("crontab_file") in ("file", "symlink") and result.code == 0)
    if result.code in (2, 3):  # bad input or a refusal changes nothing (the journal and state are bak's own)
        state = {hostile.value(chosen["state_path"])} if "state_path" in chosen else set()
        assert set(os.listdir(bak_home)) - before <= {"state", "dest"} | state, (args, set(os.listdir(bak_home)) - before)


def test_a_state_folder_that_is_not_one_is_a_clean_error(bak_home, hostile, watchdog):
    lab(bak_home)
    watchdog()
    planted = not os.path.lexists("/journal.sqlite")
    try:
        for value in ("/", str(hostile.paths["device"]), str(hostile.paths["fifo"]), str(hostile.paths["file"]),
                      str(hostile.paths["file"] / "below")):
            result = run_cli("status", "--state-dir", value)
            assert_clean(result, (2,))
            error = result.envelope["errors"][0]
            assert error["where"] == "--state-dir" or "'--state-dir'" in error["message"], error  # ours, or click's
    finally:
        if planted and os.path.lexists("/journal.sqlite"):  # what a bak without the check wrote: not left behind
            os.unlink("/journal.sqlite")
    hostile.assert_untouched()
