"""A secret handed to a tool on a database host never stays there (issue 30, item 12): the file the guardian
shell keeps has no name once the secret is in it, so whatever ends the guardian (a connection cut at any step,
SIGPIPE while it prints the path, SIGKILL) leaves nothing. Against the real sshd, with its own temp folder.

Steps of one hand-over, each where the connection is cut and where the guardian is killed:
  started     the guardian waits for the secret
  half        half of the secret has arrived
  ready       the secret is in, the path printed but not yet read by bak (the "slow login" of the report)
  in use      bak holds the path and a tool reads it
"""

import os
import shlex
import signal
from pathlib import Path

import paramiko
import pytest

from bak.config import Host
from bak.run.base import guardian_argv
from bak.run.ssh import SSHRunner
from conftest import _children, _make_sshd
from test_safety import wait_for

SECRET = b"*:*:*:*:pg-Passfile-s3cret-9f2c\n"
STEPS = ["started", "half", "ready", "in use"]


@pytest.fixture
def host(tmp_path):
    """A private sshd whose sessions keep their temp files in a folder of the test's own."""
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir()
    remote_tmp.chmod(0o1777)
    server = _make_sshd(tmp_path / "sshd", env={"TMPDIR": str(remote_tmp)})
    known = tmp_path / "known_hosts"
    server.trust(known)
    yield server, remote_tmp, known
    server.stop()


def runner_for(server, known) -> SSHRunner:
    return SSHRunner(Host(name="db", address="127.0.0.1", port=server.port, user=server.user,
                          key_file=str(server.client_key), connect_timeout=5), known)


def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        for child in _children(pending.pop()):
            found.append(child)
            pending.append(child)
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def guardians(server) -> list[int]:
    return [pid for pid in descendants(server.proc.pid) if b"bak-secret" in cmdline(pid)]


def head_has_read(server, size: int) -> bool:
    """The guardian's `head` has read `size` bytes of the secret (it may hold them in its buffer a while)."""
    for pid in descendants(server.proc.pid):
        if cmdline(pid).startswith(b"head\0"):
            try:
                io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            except OSError:
                return False
            return int(io["rchar"]) >= size
    return False


def leftovers(remote_tmp: Path) -> list[str]:
    """What stays in the host's temp folder, and any file there that holds the secret."""
    found = []
    for path in remote_tmp.rglob("*"):
        found.append(str(path.relative_to(remote_tmp)))
        if path.is_file() and SECRET.strip() in path.read_bytes():
            found.append(f"{path}: holds the secret")
    return found


def open_guardian(runner: SSHRunner) -> paramiko.Channel:
    """The guardian as bak starts it (SSHRunner._guarded's first lines), driven one step at a time."""
    channel = runner.client().get_transport().open_session(timeout=5)
    channel.exec_command(shlex.join(guardian_argv(len(SECRET))))
    return channel


def reach(step: str, server, runner: SSHRunner):
    """Drive one hand-over to `step`; returns what ending it needs (the channel, or the open context)."""
    if step == "in use":
        context = runner.secret_file(SECRET)
        path = context.__enter__()
        assert runner.run(["cat", path]).stdout == SECRET  # a tool of the same user reads it
        return context
    channel = open_guardian(runner)
    wait_for(lambda: guardians(server), 15, "the guardian")
    if step in ("half", "ready"):
        sent = SECRET if step == "ready" else SECRET[: len(SECRET) // 2]
        channel.sendall(sent)
        wait_for(lambda: head_has_read(server, len(sent)) or step == "ready" and channel.recv_ready(), 15,
                 "the secret to arrive")
        if step == "ready":
            wait_for(channel.recv_ready, 15, "the path to be printed")  # printed, never read: bak is gone before it reads
    return channel


def assert_nothing_stays(server, remote_tmp: Path):
    wait_for(lambda: not guardians(server), 15, "the guardian to end")
    assert leftovers(remote_tmp) == []


def cut_by_bak(server, runner):
    runner.client().get_transport().close()  # the network goes away, bak never says goodbye


def dropped_by_the_host(server, runner):
    for pid in _children(server.proc.pid):  # the per-connection sshd: the host drops the session
        os.kill(pid, signal.SIGKILL)


def guardian_killed(server, runner):
    for pid in guardians(server):
        os.kill(pid, signal.SIGKILL)  # no trap runs: only what the kernel does counts


@pytest.mark.parametrize("end", [cut_by_bak, dropped_by_the_host, guardian_killed], ids=lambda f: f.__name__)
@pytest.mark.parametrize("step", STEPS)
def test_nothing_stays_whatever_ends_the_hand_over_at_any_step(host, step, end):
    server, remote_tmp, known = host
    runner = runner_for(server, known)
    try:
        held = reach(step, server, runner)
        end(server, runner)
        assert_nothing_stays(server, remote_tmp)
        if step == "in use" and end is guardian_killed:
            held.__exit__(None, None, None)  # bak ends its side as usual: no error, nothing to clean
    finally:
        runner.close()
    assert leftovers(remote_tmp) == []


def test_a_passfile_works_for_libpq_and_pg_restore_jobs_over_ssh(host):
    """The nameless file is a regular 0600 file to a tool that opens /proc/PID/fd/N, again and again."""
    server, remote_tmp, known = host
    runner = runner_for(server, known)
    try:
        with runner.secret_file(SECRET) as path:
            assert path.startswith("/proc/") and "/fd/" in path
            assert runner.run(["stat", "-L", "-c", "%a %F", path]).stdout_text.strip() == "600 regular file"
            assert [runner.run(["cat", path]).stdout for _ in range(3)] == [SECRET] * 3
            assert leftovers(remote_tmp) == []  # nothing with a name, even while in use
        with runner.private_file() as staged:  # written by dd, then read by name (pg_restore -j reopens it)
            runner.run(["dd", f"of={staged}", "status=none"], stdin=b"x" * 100_000)
            assert runner.run(["wc", "-c", staged]).stdout_text.split()[0] == "100000"
        assert_nothing_stays(server, remote_tmp)
    finally:
        runner.close()
