"""The runner interface shared by the local and SSH runners."""

from __future__ import annotations

import collections
import shlex
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from bak.errors import CommandFailed

CHUNK = 1 << 20
STDERR_TAIL_BYTES = 64 * 1024

Sink = Callable[[bytes], None]


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


@dataclass
class Held:
    """A command `Runner.held` keeps: the first line it printed, and once it ended, the rest."""
    line: str
    output: str = ""


class StderrTail:
    """Keeps the last STDERR_TAIL_BYTES of stderr and passes each line to an optional callback."""

    def __init__(self, on_line: Callable[[str], None] | None = None):
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._on_line = on_line
        self._pending = b""

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        while self._size > STDERR_TAIL_BYTES and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())
        if self._on_line:
            self._pending += data
            *lines, self._pending = self._pending.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                if line:
                    self._on_line(line.decode("utf-8", "replace"))

    def value(self) -> bytes:
        if self._on_line and self._pending:
            self._on_line(self._pending.decode("utf-8", "replace"))
            self._pending = b""
        return b"".join(self._chunks)[-STDERR_TAIL_BYTES:]


# A file that lives as long as bak does, and never longer, whatever ends it. sh makes a private folder, opens a
# file in it on descriptor 3 and removes the folder at once: the file has no name left before a byte of the secret
# is in it. It then copies stdin's first N bytes into it, prints /proc/PID/fd/3 (where a process of the same user
# reopens it, on Linux) and waits for its stdin to close. Whatever ends sh then (bak closing stdin, a cut SSH
# connection, SIGPIPE while printing, SIGKILL), the kernel closes the descriptor and frees the file: nothing stays.
# Without /proc (a BSD host): a named file, removed by the trap (which SIGKILL skips).
GUARDIAN = ('umask 077; d=$(mktemp -d -t bak-secret.XXXXXXXX) || exit 1; trap \'rm -rf "$d"\' EXIT HUP INT TERM PIPE; '
            'if [ -d "/proc/$$/fd" ]; then exec 3>"$d/file" && rm -rf "$d" || exit 1; p="/proc/$$/fd/3"; '
            'head -c "$1" >&3 || exit 1; else p="$d/file"; head -c "$1" > "$p" || exit 1; fi; '
            'echo "$p" && cat > /dev/null')


def guardian_argv(size: int) -> list[str]:
    return ["sh", "-c", GUARDIAN, "sh", str(size)]


def operand(path: str) -> str:
    """A path as a command's operand where `--` cannot end the options (find's starting points): `-x` as `./-x`."""
    return "./" + path if path.startswith("-") else path


def ere_escape(text: str) -> str:
    """`text` as a POSIX extended regular expression matching itself (for pgrep -f)."""
    return "".join("\\" + c if c in ".[]()*+?{}|^$\\" else c for c in text)


class Cancel:
    """Stops a running command: `request()` asks for it; `interrupted` is set once the child has been signalled
    (or has ended), so a stdin source may end only then: an end of input first could make it save a short result."""

    def __init__(self):
        self.requested = threading.Event()
        self.interrupted = threading.Event()

    def request(self) -> None:
        self.requested.set()

    def is_set(self) -> bool:
        return self.requested.is_set()


class Feeder(threading.Thread):
    """Streams a command's stdin from `source` on its own thread. The command ending early (a closed pipe)
    is normal; the source failing (a restic dump that breaks off) is kept and raised where the command ran,
    never printed as a thread's traceback."""

    def __init__(self, source: bytes | BinaryIO, write: Callable[[bytes], None], close: Callable[[], None]):
        super().__init__(daemon=True)
        self.source, self.write, self.close = source, write, close
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if isinstance(self.source, bytes):
                self.write(self.source)
                return
            while True:
                try:
                    chunk = self.source.read(CHUNK)
                except BaseException as exc:  # raised again by raise_failure, in the caller's thread
                    self.error = exc
                    return
                if not chunk:
                    return
                self.write(chunk)
        except (OSError, EOFError):
            pass  # the command stopped reading
        finally:
            try:
                self.close()
            except (OSError, EOFError):
                pass

    def raise_failure(self) -> None:
        if self.error is not None:
            raise self.error


def tail_text(data: bytes, lines: int = 20) -> str:
    return "\n".join(data.decode("utf-8", "replace").strip().splitlines()[-lines:])


class Runner:
    """Runs argv lists on one host. Subclasses: LocalRunner, SSHRunner."""

    host_name: str

    def run(self, argv: list[str], *, stdin: bytes | BinaryIO | None = None, stdout: Sink | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None, check: bool = True,
            on_stderr_line: Callable[[str], None] | None = None, merge_stderr: bool = False) -> Completed:
        """Run argv; stdout goes to `stdout` chunk by chunk when given, else is returned.

        `env` is for non-secret values: over SSH it becomes an `env K=V` prefix on the remote
        command line. Secrets go through `secret_file`, never env or argv. `merge_stderr` joins stderr
        to stdout in the order the bytes come (a Proxmox task prints its log on one, its error on the other).
        """
        raise NotImplementedError

    def describe(self, argv: list[str]) -> str:
        """The exact command line as it runs on the host, for logs and dry runs."""
        return shlex.join(argv)

    def has_tool(self, tool: str) -> bool:
        raise NotImplementedError

    def processes_using(self, path: str) -> list[tuple[int, str]]:
        """(pid, command line) of the processes on this host whose command line names `path`:
        an orphaned writer of a killed run (rsync still filling a partial) shows up here."""
        raise NotImplementedError

    @contextmanager
    def secret_file(self, content: bytes) -> Iterator[str]:
        """A path on the host that reads `content`, private to its owner, gone afterwards, and gone
        too when bak is killed (see GUARDIAN); only the process whose env names it can read it."""
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def held(self, argv: list[str]) -> Iterator[Held]:
        """Starts argv with its stdin held open by bak and yields the first line it prints; leaving the
        block closes that stdin and waits for argv to end (its other lines: `Held.output`). When bak dies,
        the kernel closes the pipe (or the SSH connection goes): argv sees the end of its input either way,
        so it can undo what bak could not (the guardian of a secret file, the keeper of a scratch guest)."""
        with self._held(argv, b"") as held:
            yield held

    def _held(self, argv: list[str], first_input: bytes):
        """`held`, with `first_input` written to argv's stdin first."""
        raise NotImplementedError

    @contextmanager
    def private_file(self) -> Iterator[str]:
        """An empty 0600 file on the host, gone afterwards whatever ends bak (nameless on Linux, see GUARDIAN)."""
        with self._guarded(b"") as path:
            yield path

    @contextmanager
    def _guarded(self, content: bytes) -> Iterator[str]:
        """The path of a file holding `content`, kept by GUARDIAN on the host (/proc/PID/fd/3: it has no name)."""
        with self._held(guardian_argv(len(content)), content) as held:
            if not held.line:
                raise CommandFailed(f"could not create a private temp file on {self.host_name}", where=self.host_name)
            yield held.line

    def close(self) -> None:
        pass

    def _check(self, completed: Completed, check: bool) -> Completed:
        if check and completed.returncode != 0:
            tail = tail_text(completed.stderr)
            raise CommandFailed(f"{completed.argv[0]} exited {completed.returncode}" + (f": {tail.splitlines()[-1]}" if tail else ""),
                                returncode=completed.returncode, stderr_tail=tail, where=self.host_name)
        return completed
