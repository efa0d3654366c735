"""Runs processes on this machine with subprocess, argv lists only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from bak.errors import CommandFailed, ToolMissing
from bak.run.base import CHUNK, Cancel, Completed, Feeder, Held, Runner, Sink, StderrTail
from bak.secrets import secret_env_names


@lru_cache(maxsize=1)
def orphan_guard() -> tuple[str, ...]:
    """A prefix that makes the kernel kill a child when bak dies (PR_SET_PDEATHSIG through util-linux's
    setpriv): a SIGKILLed bak leaves no rsync writing into a partial. Linux only; elsewhere, none."""
    if sys.platform.startswith("linux") and shutil.which("setpriv"):
        return ("setpriv", "--pdeathsig", "KILL", "--")
    return ()


def guarded_argv(argv: list[str]) -> list[str]:
    return [*orphan_guard(), *argv]


class LocalRunner(Runner):
    host_name = "local"

    def __init__(self):
        self._secret_fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def run(self, argv: list[str], *, stdin: bytes | BinaryIO | None = None, stdout: Sink | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None, check: bool = True,
            on_stderr_line: Callable[[str], None] | None = None, cancel: Cancel | None = None,
            merge_stderr: bool = False) -> Completed:
        """`cancel`, once requested, interrupts the child (SIGINT, then SIGKILL after CANCEL_GRACE_S): restic
        then drops what it was saving and removes its lock."""
        # Secrets named by the config ({env: VAR}) reach no child: the one tool that needs one gets a file.
        full_env = {k: v for k, v in os.environ.items() if k not in secret_env_names()}
        full_env.update(env or {})
        with self._lock:
            pass_fds = tuple(fd for path, fd in self._secret_fds.items() if path in full_env.values())
        if not shutil.which(argv[0]):
            raise ToolMissing(f"{argv[0]} is not installed on this machine", where="local",
                              hint=f"Install {Path(argv[0]).name} (e.g. apt-get install ...) or set its folder in the config.")
        try:
            proc = subprocess.Popen(guarded_argv(argv), stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                                    env=full_env, pass_fds=pass_fds)
        except FileNotFoundError:
            raise ToolMissing(f"{argv[0]} is not installed on this machine", where="local",
                              hint=f"Install {Path(argv[0]).name} (e.g. apt-get install ...) or set its folder in the config.") from None
        tail = StderrTail(on_stderr_line)
        threads = [] if merge_stderr else [threading.Thread(target=_drain, args=(proc.stderr, tail.feed), daemon=True)]
        feeder = None
        if stdin is not None:
            feeder = Feeder(stdin, lambda chunk: (proc.stdin.write(chunk), proc.stdin.flush()), proc.stdin.close)
            threads.append(feeder)
        if cancel is not None:
            threads.append(threading.Thread(target=_interrupt_on, args=(proc, cancel), daemon=True))
        timed_out = threading.Event()
        timer = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill())) if timeout else None
        for thread in threads:
            thread.start()
        if timer:
            timer.start()
        collected: list[bytes] = []
        try:
            _drain(proc.stdout, stdout or collected.append)
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            # A grandchild (tar's gzip) may still be writing into stdout and hold stderr open: closing our
            # end ends it (EPIPE), so the stderr reader below sees its end instead of waiting forever.
            proc.stdout.close()
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
            for thread in threads:
                thread.join()
        if feeder:
            feeder.raise_failure()
        if cancel is not None and cancel.is_set():
            raise CommandFailed(f"{argv[0]} was stopped", returncode=returncode, stderr_tail=tail.value().decode(
                "utf-8", "replace")[-2000:], where="local", code="cancelled")
        completed = Completed(list(argv), returncode, b"".join(collected), tail.value())
        if timed_out.is_set():
            raise CommandFailed(f"{argv[0]} timed out after {timeout:.0f}s and was killed", returncode=returncode,
                                stderr_tail=completed.stderr_text[-2000:], where="local", code="timeout")
        return self._check(completed, check)

    def has_tool(self, tool: str) -> bool:
        return shutil.which(tool) is not None

    def processes_using(self, path: str) -> list[tuple[int, str]]:
        found = []
        proc = Path("/proc")
        if not proc.is_dir():
            return found  # no /proc (Windows, macOS): nothing to tell
        needle = os.fsencode(path)
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if needle in cmdline:
                found.append((int(entry.name), os.fsdecode(cmdline.replace(b"\0", b" ")).strip()))
        return found

    @contextmanager
    def secret_file(self, content: bytes) -> Iterator[str]:
        """On Linux an anonymous memory file (memfd), never on a disk; a child gets it as /dev/fd/N only
        when its env names that path. Elsewhere, a guarded private file."""
        if not hasattr(os, "memfd_create"):
            with self._guarded(content) as path:
                yield path
            return
        fd = os.memfd_create("bak-secret")  # close-on-exec: only the children we pass it to see it
        try:
            os.fchmod(fd, 0o600)  # libpq refuses a passfile others could read
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            path = f"/dev/fd/{fd}"
            with self._lock:
                self._secret_fds[path] = fd
            yield path
        finally:
            with self._lock:
                self._secret_fds.pop(f"/dev/fd/{fd}", None)
            os.close(fd)

    @contextmanager
    def _held(self, argv: list[str], first_input: bytes) -> Iterator[Held]:
        """Not under the orphan guard: it must outlive a killed bak long enough to clean up."""
        keeper = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        held = Held("")
        try:
            keeper.stdin.write(first_input)
            keeper.stdin.flush()
            held.line = keeper.stdout.readline().decode().rstrip("\n")
            yield held
        finally:
            keeper.stdin.close()
            held.output = keeper.stdout.read().decode("utf-8", "replace")
            keeper.wait()


CANCEL_GRACE_S = 5.0


def _interrupt_on(proc: subprocess.Popen, cancel: Cancel) -> None:
    """SIGINT once cancelling is requested; `interrupted` once the child no longer reads its input."""
    while proc.poll() is None:
        if cancel.requested.wait(0.2):
            proc.send_signal(signal.SIGINT)
            cancel.interrupted.set()
            try:
                proc.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            break
    cancel.interrupted.set()


def _drain(stream, sink: Sink) -> None:
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            break
        sink(chunk)
    stream.close()


def processes_holding(path: str) -> list[tuple[int, str]]:
    """(pid, command line) of local processes with `path` open (Linux /proc; elsewhere none known)."""
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == path for fd in (entry / "fd").iterdir()):
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    "utf-8", "replace").strip()))
        except OSError:
            continue
    return found
