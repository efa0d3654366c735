"""A restic repository as a store, on any backend restic has: a local path, sftp:, rest: or s3:.

bak drives restic, it does not reimplement it: each file artifact is a `restic backup --stdin`
snapshot completed by a seal, each folder snapshot one `restic backup` of the finished folder (see
resticcmd for the layout). restic always runs on this machine. Secrets never reach argv: the
repository password is an anonymous memory file (RESTIC_PASSWORD_FILE), S3 keys are in restic's own
environment only. An sftp: repository goes through bak's ssh (its key, its known_hosts only).

restic retries a lost connection for minutes; bak stops it once retries have gone on for
`retry_seconds` (SIGINT: restic drops the snapshot it was writing and removes its lock), so a
dead server fails the copy instead of hanging the run; a listing gets at most LISTING_PATIENCE_S. A lock left by a killed restic is removed
by `restic unlock`, which removes only locks whose holder is gone; a live holder is named and respected.
"""

from __future__ import annotations

import io
import queue
import secrets as random_tokens
import shutil
import tarfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from bak import naming
from bak.errors import (BadInput, BakError, CommandFailed, HostKeyUnknown, LockHeld, Refused, TransportError,
                        WriteFailed)
from bak.naming import PARTIAL_SUFFIX, SIDECAR_SUFFIXES
from bak.run.base import Cancel, Completed
from bak.run.local import LocalRunner
from bak.secrets import read_secret
from bak.stores import resticcmd as cmd
from bak.stores.base import ArtifactWriter, Entry, Store, Usage, chunks_of, sha256_line

RETRY_WINDOW_S = 60  # restic's backoff between attempts stays below this: a longer quiet means it recovered
# Listing the snapshots is small: a server that has not answered it in this long is reported unreachable, so
# status answers and the other destinations' copies go ahead (uploads get the destination's retry_seconds).
LISTING_PATIENCE_S = 20
# Failures that are the repository's, not one upload's: said in bak's words, with their own codes.
REPOSITORY_STATES = ("repository_locked", "restic_wrong_password", "restic_no_repository", "restic_gave_up",
                     "restic_unreachable", "host_key_unknown")


class _Pipe:
    """Chunks handed from one thread to another, bounded (back-pressure, no big buffer). Either side can
    break it off: the reader gets the writer's error, the writer learns that nobody reads any more."""

    def __init__(self, reader_alive: Callable[[], bool] = lambda: True, on_close_reading: Callable[[], None] = lambda: None,
                 cancel: Cancel | None = None):
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._done = False
        self._reader_alive = reader_alive
        self._on_close_reading = on_close_reading
        self._cancel = cancel  # as the reader's input: once its process is interrupted, reading breaks off

    def put(self, chunk: bytes) -> None:
        while True:
            try:
                self._queue.put(chunk, timeout=0.2)
                return
            except queue.Full:
                if not self._reader_alive():
                    raise BrokenPipeError("the reading process ended") from None

    def close(self) -> None:
        self.put(None)

    def fail(self, exc: BaseException) -> None:
        """The writer broke off: the reader gets this error instead of a quiet, short end."""
        self._queue.put(exc)

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        while True:
            try:
                chunk = self._queue.get(timeout=0.1 if self._cancel else None)
                break
            except queue.Empty:
                if self._cancel.interrupted.is_set():  # its reader was stopped or has ended: nothing more to give
                    self._done = True
                    return b""
        if chunk is None or isinstance(chunk, BaseException):
            self._done = True
            if chunk is not None:
                raise chunk
            return b""
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close_reading()

    def close_reading(self) -> None:
        """The reader stops early: the writer is told, and whatever still comes is let through and dropped."""
        if not self._done:
            self._on_close_reading()
        while not self._done:
            try:
                self.read()
            except BaseException:
                self._done = True


class _GiveUp:
    """Watches restic's stderr for retries of a failing backend; cancels it once they have gone on
    for `seconds` without a quiet of RETRY_WINDOW_S in between."""

    def __init__(self, seconds: float, cancel: Cancel):
        self.seconds, self.cancel = seconds, cancel
        self.first: float | None = None
        self.last: float | None = None
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def line(self, text: str) -> None:
        if not cmd.RETRYING.search(text):
            return
        now = time.monotonic()
        if self.last is None or now - self.last > RETRY_WINDOW_S:
            self.first = now
        self.last = now
        self.lines = (self.lines + [text])[-3:]

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            if self.first is not None and now - self.last < RETRY_WINDOW_S and now - self.first > self.seconds:
                self.cancel.request()
                return

    def stop(self) -> None:
        self._stop.set()

    @property
    def gave_up(self) -> bool:
        return self.cancel.is_set() and self.first is not None


def restic_message(exc: BakError) -> str:
    """restic's own words for what failed (its last stderr lines), not just an exit status."""
    lines = [line for line in (getattr(exc, "stderr_tail", "") or "").splitlines()
             if line.strip() and not line.startswith("{")]
    return "; ".join(lines[-3:]) if lines else exc.message


class _Process:
    """One restic command running on its own thread, stdin fed chunk by chunk, stoppable at any time."""

    def __init__(self, store: "ResticStore", argv: list[str], on_stdout: Callable[[bytes], None] | None = None):
        self.store = store
        self.cancel = Cancel()
        self.pipe = _Pipe(reader_alive=lambda: self._thread.is_alive(), cancel=self.cancel)
        self.result: Completed | None = None
        self.error: BakError | None = None
        self._thread = threading.Thread(target=self._run, args=(argv, on_stdout), daemon=True)
        self._thread.start()

    def _run(self, argv: list[str], on_stdout) -> None:
        try:
            self.result = self.store.run(argv, stdin=self.pipe, stdout=on_stdout, cancel=self.cancel, retry=False)
        except BakError as exc:
            self.error = exc

    def put(self, chunk: bytes) -> None:
        if self.error is None:
            try:
                self.pipe.put(chunk)
                return
            except BrokenPipeError:
                self._thread.join()
        raise self.failure()

    def finish(self) -> Completed:
        """End of input: wait for restic to save its snapshot."""
        try:
            self.pipe.close()
        except BrokenPipeError:
            pass
        self._thread.join()
        if self.error is not None or self.result is None:
            raise self.failure()
        return self.result

    def stop(self) -> None:
        """Break off: restic is interrupted before it saves anything."""
        self.cancel.request()
        self._thread.join()

    def failure(self) -> WriteFailed:
        """What stopped the upload: bak's own words for the repository's state, else restic's."""
        exc = self.error or CommandFailed("restic ended without a result", where=self.store.name)
        if exc.code in REPOSITORY_STATES:
            return WriteFailed(exc.message, where=exc.where, code=exc.code, hint=exc.hint)
        return WriteFailed(f"restic backup into {self.store.name} failed: {restic_message(exc)}", where=self.store.name,
                           hint=exc.hint or "Check the repository (bak verify) and its free space.")


class _Lines:
    """restic --json output, line by line, keeping what matters and passing progress on."""

    def __init__(self, progress: Callable[[dict], None] | None = None):
        self.kept: list[bytes] = []
        self._pending = b""
        self._progress = progress

    def feed(self, chunk: bytes) -> None:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            if b'"message_type":"status"' in line:
                if self._progress:
                    import json

                    try:
                        self._progress(json.loads(line))
                    except ValueError:
                        pass
            else:
                self.kept.append(line)

    def text(self) -> str:
        return b"\n".join(self.kept + [self._pending]).decode("utf-8", "replace")


def seal_tar(sidecars: dict[str, bytes], when: float) -> bytes:
    """The seal's content: every sidecar of the artifact as a plain tar (restic dump ... | tar x reads it)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in sorted(sidecars.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(when), 0o600
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def restic_time(when: float) -> str:
    """restic's --time: local time, to the second."""
    return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


class ResticWriter(ArtifactWriter):
    """One artifact streamed into the repository, then sealed.

    `expected` (size, sha256, sidecars), when the bytes are copies of a checked backup (bak sync): the
    stream is broken off, so nothing is saved, if the bytes do not match. With a `sealer` the artifact is
    sealed later with others (see Sealer); else its own seal is started beside the stream's end.
    `when` keeps a copied backup's own time."""

    def __init__(self, store: "ResticStore", folder: str, name: str, *,
                 expected: tuple[int, str, dict[str, bytes]] | None = None, when: float | None = None,
                 sealer: "Sealer | None" = None):
        self.store, self.folder, self.name = store, folder, name
        self.location = store.location(folder, name)
        self.when = when
        self.token = random_tokens.token_hex(8)
        self._lines = _Lines()
        self._stream = _Process(store, cmd.backup_stdin_argv(f"/{folder}/{name}", [f"upload={self.token}"],
                                                             store.options(when)), self._lines.feed)
        self._seal: _Process | None = None
        self._sealer = sealer
        self._expected = expected
        self.expected_sha256 = expected[1] if expected else None
        self.expected_sidecars = expected[2] if expected else {}

    def write(self, chunk: bytes) -> None:
        self._stream.put(chunk)
        self.size += len(chunk)

    def commit(self, sha256: str, sidecars: dict[str, bytes] | None = None) -> None:
        """The artifact's snapshot first; the seal, that makes it count, only once that one is saved whole."""
        sidecars = {n: d for n, d in (sidecars or {}).items() if not n.endswith(".sha256")}
        if self._expected is not None and (self.size, sha256) != self._expected[:2]:
            self.abort()
            raise WriteFailed(f"{self.name}: the bytes read ({self.size}, sha256 {sha256[:16]}...) do not match the "
                              f"source's sidecar ({self._expected[0]}, {self._expected[1][:16]}...); nothing was copied",
                              where=self.store.name, code="checksum_mismatch",
                              hint="Verify the source copy (bak verify --all-backups); copy from another one.")
        upload = Upload(self.folder, self.name, self.token, self.size, sha256, sidecars)
        try:
            if self._sealer is None:  # its seal's restic starts now: its key derivation overlaps the last upload
                self._seal = _Process(self.store, cmd.backup_stdin_argv(
                    f"/{self.folder}/{self.name}{cmd.SEAL_SUFFIX}", cmd.seal_tags([upload.tag_values()]),
                    self.store.options(self.when)))
            self._stream.finish()
            summary = cmd.parse_backup(self._lines.text())
            if summary is None or summary.get("total_bytes_processed") != self.size:
                raise WriteFailed(f"restic saved {summary and summary.get('total_bytes_processed')} bytes of "
                                  f"{self.name}, {self.size} were sent", where=self.store.name)
            if self._sealer is not None:
                self._sealer.add(upload)
                return
            self._seal.put(seal_tar(sidecars, self.when or time.time()))
            self._seal.finish()
            self._seal = None
        except BaseException:
            self.abort()
            raise
        finally:
            self.store.forget_cached()

    def abort(self) -> None:
        for process in (self._stream, self._seal):
            if process is not None:
                process.stop()
        self.store.forget_cached()


class Upload:
    """An artifact saved in the repository, waiting for its seal."""

    def __init__(self, folder: str, name: str, token: str, size: int, sha256: str, sidecars: dict[str, bytes]):
        self.folder, self.name, self.token, self.size, self.sha256, self.sidecars = folder, name, token, size, sha256, sidecars

    def tag_values(self) -> tuple[str, int, str, list[str]]:
        return self.token, self.size, self.sha256, [n[len(self.name):] for n in sorted(self.sidecars)
                                                     if n.startswith(self.name) and n != self.name]


class Sealer:
    """Seals uploads by batches (bak sync): one seal, so one restic run, for every upload of up to
    `every_s` seconds. An upload counts only once sealed: a run killed before loses that batch's copies,
    which the next run makes again."""

    def __init__(self, store: "ResticStore", every_s: float = 60.0):
        self.store, self.every_s = store, every_s
        self.pending: list[Upload] = []
        self._since = time.monotonic()

    def add(self, upload: Upload) -> None:
        if not self.pending:
            self._since = time.monotonic()
        self.pending.append(upload)

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self._since >= self.every_s

    def seal(self) -> list[Upload]:
        """Seal what is pending (all in one folder: a target's); returns what now counts."""
        if not self.pending:
            return []
        batch, self.pending = self.pending, []
        first = batch[0]
        sidecars = {name: data for upload in batch for name, data in upload.sidecars.items()}
        seal = _Process(self.store, cmd.backup_stdin_argv(f"/{first.folder}/{first.name}{cmd.SEAL_SUFFIX}",
                                                          cmd.seal_tags([u.tag_values() for u in batch]),
                                                          self.store.options()))
        try:
            seal.put(seal_tar(sidecars, time.time()))
            seal.finish()
        except BaseException:
            seal.stop()
            raise
        finally:
            self.store.forget_cached()
        return batch


class ResticStore(Store):
    kind = "restic"
    host_name = "local"  # restic runs here, whatever the backend
    forgot = False  # whether this run forgot snapshots: their data goes with the next `restic prune`

    def __init__(self, name: str, repository: str, password: dict, *, ssh_host=None, known_hosts: Path | None = None,
                 aws: dict | None = None, limit_upload_kib: int | None = None, retry_seconds: float = 300,
                 ssh_check: Callable[[], object] | None = None):
        """`ssh_check` connects to an sftp: repository's host first (bak's own SSH, its host key checked): an
        unknown key is then refused with its fingerprint, which restic's ssh cannot report reliably."""
        self.name = name
        self._ssh_check = ssh_check
        self.backend = cmd.backend_of(repository)
        self.password_ref = password
        self.aws = aws or {}
        self.limit_upload_kib = limit_upload_kib
        self.retry_seconds = retry_seconds
        self.runner = LocalRunner()
        self._sftp = None
        if self.backend == "local":
            if not repository.startswith(("/", "~")):
                raise BadInput(f"restic destination {name}: {repository!r} is not a path or a restic backend "
                               "(sftp:, rest:, s3:)", where=f"destinations.{name}.repository")
            self.repository = str(Path(repository).expanduser())
        elif self.backend == "sftp":
            if ssh_host is None:
                raise BadInput(f"restic destination {name}: an sftp: repository needs `host` (an SSH host of the config)",
                               where=f"destinations.{name}.host")
            from bak.methods.rsync import ssh_transport

            self.repository = cmd.sftp_location(ssh_host.user, ssh_host.address, repository)
            self._sftp = cmd.sftp_command(ssh_transport(ssh_host, known_hosts), ssh_host.user, ssh_host.address)
        else:
            self.repository = repository
        self._secrets: dict[str, str] = {}
        self._cache: tuple[list[cmd.Artifact], list[cmd.Artifact]] | None = None
        self._seals: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    # -- running restic ---------------------------------------------------------------------
    def options(self, when: float | None = None) -> list[str]:
        """restic's global options for this repository; `when` is a copied backup's own time (backup only)."""
        argv = cmd.global_options(sftp_command=self._sftp, limit_upload_kib=self.limit_upload_kib)
        return argv + (["--time", restic_time(when)] if when is not None else [])

    def _secret(self, key: str, ref: dict) -> str:
        with self._lock:
            if key not in self._secrets:
                self._secrets[key] = read_secret(ref, f"destinations.{self.name}.{key}")
            return self._secrets[key]

    @contextmanager
    def _env(self) -> Iterator[dict[str, str]]:
        password = self._secret("password", self.password_ref)
        with self.runner.secret_file(password.encode() + b"\n") as password_file:
            env = {"RESTIC_REPOSITORY": self.repository, "RESTIC_PASSWORD_FILE": password_file,
                   "RESTIC_PROGRESS_FPS": "0.2"}
            # S3 keys: in restic's environment only (never argv); the runner keeps config {env} secrets from
            # every other child, so they are given here explicitly.
            for key, variable in (("aws_access_key_id", "AWS_ACCESS_KEY_ID"), ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")):
                if key in self.aws:
                    env[variable] = self._secret(key, self.aws[key])
            yield env

    def run(self, argv: list[str], *, retry: bool = True, cancel: Cancel | None = None, patience: float | None = None,
            **kwargs) -> Completed:
        """A restic command, its failures in bak's terms. A command without input is run once more after
        `restic unlock` when a lock stops it (unlock removes only the locks whose holder is gone). `patience`
        shortens how long a backend that does not answer is retried (retry_seconds at most)."""
        if self._ssh_check is not None:
            self._ssh_check()
            self._ssh_check = None
        for attempt in (1, 2):
            cancel_event = cancel or Cancel()
            budget = min(self.retry_seconds, patience or self.retry_seconds)
            watch = _GiveUp(budget, cancel_event)
            try:
                with self._env() as env:
                    return self.runner.run(argv, env=env, cancel=cancel_event, on_stderr_line=watch.line, **kwargs)
            except CommandFailed as exc:
                problem = self._explain(argv, exc, (watch.lines, budget) if watch.gave_up else None)
                if problem.code == "repository_locked" and retry and attempt == 1 and "stdin" not in kwargs:
                    self.unlock()
                    continue
                raise problem from None
            finally:
                watch.stop()
        raise AssertionError("unreachable")

    def _explain(self, argv: list[str], exc: CommandFailed, retries: tuple[list[str], float] | None = None) -> BakError:
        """`retries`: restic's last retry messages and the seconds it was given, when bak stopped it."""
        where = f"destinations.{self.name}"
        verb = next((a for a in argv if a in cmd.VERBS), "?")
        kind = cmd.failure_kind(exc.stderr_tail)
        if retries is not None:
            return CommandFailed(f"restic {verb} on {self.name} gave up after retrying for {retries[1]:.0f}s: "
                                 + "; ".join(retries[0][-1:]), where=self.name, code="restic_gave_up",
                                 stderr_tail=exc.stderr_tail,
                                 hint="The server did not answer: check it and the network, then run again; "
                                      "nothing incomplete was counted.")
        if kind == "wrong_password":
            return BadInput(f"restic repository {self.name}: wrong password", where=f"{where}.password",
                            code="restic_wrong_password",
                            hint=f"Point destinations.{self.name}.password at the password the repository was created with.")
        if kind == "host_key":
            return HostKeyUnknown(f"ssh refused the host key of the server of {self.name} (restic's sftp goes through "
                                  "bak's known_hosts only)", where=f"{where}.host",
                                  hint="Check the host's key, then record it with: bak ssh trust HOST --fingerprint SHA256:...")
        if kind == "unreachable":
            return TransportError(f"the server of restic repository {self.name} does not answer: {restic_message(exc)}",
                                  where=self.name, code="restic_unreachable",
                                  hint="Check that the server runs and is reachable from here; nothing was changed.")
        if kind == "no_repository":
            return Refused(f"there is no restic repository at {self.describe()}", where=where, code="restic_no_repository",
                           hint=f"Create it with: bak destination init {self.name} (or fix destinations.{self.name}.repository).")
        if kind == "exists":
            return Refused(f"a restic repository already exists at {self.describe()}", where=where,
                           code="restic_repository_exists", hint="bak never initialises over an existing repository.")
        if kind == "locked":
            holder = cmd.lock_holder(exc.stderr_tail) or {}
            who = f"PID {holder['pid']} on {holder['host']}" if holder else "another restic"
            return LockHeld(f"restic repository {self.name} is locked by {who}", where=self.name, code="repository_locked",
                            hint="That restic is still running: wait for it. A lock whose holder is gone is removed "
                                 "by the next run.", details={"holder": holder})
        return CommandFailed(f"restic {verb} on {self.name} failed: {restic_message(exc)}", returncode=exc.returncode,
                             stderr_tail=exc.stderr_tail, where=self.name, code="restic_failed")

    def describe(self) -> str:
        """The repository's location, as the operator wrote it (no secret is ever part of it)."""
        return self.repository

    def unlock(self) -> None:
        self.run(cmd.simple_argv("unlock", self.options()), retry=False)

    def init(self) -> None:
        """Create the repository; refused when one is already there."""
        self.run(cmd.simple_argv("init", self.options()), retry=False)

    def ensure_repository(self) -> None:
        """A repository on a local path is created on first use, like a local folder; a remote one only by
        `bak destination init`, so a mistyped address never quietly starts a new repository."""
        try:
            self.run(cmd.simple_argv("cat config", self.options()), patience=LISTING_PATIENCE_S)
        except Refused as exc:
            if exc.code != "restic_no_repository" or self.backend != "local":
                raise
            self.init()

    # -- what is in it ----------------------------------------------------------------------
    def location(self, folder: str, name: str = "") -> str:
        return f"restic:{self.describe()}/{folder}/{name}"

    def _layout(self) -> tuple[list[cmd.Artifact], list[cmd.Artifact]]:
        with self._lock:
            cached = self._cache
        if cached is None:
            try:
                out = self.run(cmd.snapshots_argv(self.options()), patience=LISTING_PATIENCE_S)
            except Refused as exc:
                if exc.code == "restic_no_repository" and self.backend == "local":
                    return [], []  # not created yet: the first backup creates it
                raise
            cached = cmd.layout(cmd.parse_snapshots(out.stdout_text))
            with self._lock:
                self._cache = cached
        return cached

    def forget_cached(self) -> None:
        with self._lock:
            self._cache = None

    def artifacts(self, folder: str | None = None) -> list[cmd.Artifact]:
        complete, _ = self._layout()
        return [a for a in complete if folder is None or a.folder == folder]

    def leftovers(self, folder: str | None = None) -> list[cmd.Artifact]:
        _, partial = self._layout()
        return [a for a in partial if folder is None or a.folder == folder]

    def find(self, folder: str, name: str) -> cmd.Artifact:
        for artifact in self.artifacts(folder):
            if artifact.name == name:
                return artifact
        raise FileNotFoundError(f"{folder}/{name} in {self.name}")

    def list(self, folder: str) -> list[Entry]:
        entries = []
        for artifact in self.artifacts(folder):
            entries.append(Entry(artifact.name, artifact.size, artifact.time, False))
            if artifact.name.endswith(SIDECAR_SUFFIXES):
                continue  # a sidecar stored on its own by bak 0.1
            suffixes = [naming.MANIFEST_SUFFIX] if artifact.tree else [".sha256", *artifact.sidecars]
            if artifact.protected:
                suffixes.append(".protected")
            entries += [Entry(artifact.name + s, 0, artifact.time, False) for s in dict.fromkeys(suffixes)]
        for leftover in self.leftovers(folder):
            entries.append(Entry(leftover.name + PARTIAL_SUFFIX, 0, leftover.time, False))
        return entries

    def ids_of(self, folder: str, names: list[str] | str) -> list[str]:
        """Every snapshot that forgetting these backups (or, for NAME.partial, leftovers) together removes."""
        wanted = {names} if isinstance(names, str) else set(names)
        chosen = [a for a in self.artifacts(folder) if a.name in wanted]
        chosen += [a for a in self.leftovers(folder) if a.name + PARTIAL_SUFFIX in wanted]
        return cmd.forget_ids(chosen)

    # -- reading ------------------------------------------------------------------------------
    def read_small(self, folder: str, name: str, limit: int = 1 << 20) -> bytes:
        for artifact in self.artifacts(folder):
            if not name.startswith(artifact.name) or artifact.name.endswith(SIDECAR_SUFFIXES):
                continue
            suffix = name[len(artifact.name):]
            if suffix == ".sha256" and artifact.sha256:
                return sha256_line(artifact.sha256, artifact.name)
            if suffix == ".protected" and artifact.protected:
                return b""
            if suffix == naming.MANIFEST_SUFFIX and artifact.tree and cmd.manifest_path(artifact):
                return self._dump_bytes(artifact.ids[0], cmd.manifest_path(artifact), limit)
            if suffix in artifact.sidecars and artifact.seal:
                sidecar = self._sidecars(artifact).get(name)
                if sidecar is not None:
                    return sidecar[:limit]
        for artifact in self.artifacts(folder):  # bak 0.1: the sidecar is a snapshot of its own
            if artifact.name == name and artifact.stream:
                return self._dump_bytes(artifact.stream, f"/{folder}/{name}", limit)
        raise FileNotFoundError(f"{folder}/{name} in {self.name}")

    def _sidecars(self, artifact: cmd.Artifact) -> dict[str, bytes]:
        if artifact.seal not in self._seals:
            data = self._dump_bytes(artifact.seal, artifact.seal_path, 1 << 30)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                self._seals[artifact.seal] = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
        return self._seals[artifact.seal]

    def _dump_bytes(self, snapshot: str, path: str, limit: int) -> bytes:
        return self.run(cmd.dump_argv(snapshot, path, self.options())).stdout[:limit]

    def open_read(self, folder: str, name: str) -> BinaryIO:
        artifact = self.find(folder, name)
        if artifact.tree:
            raise BadInput(f"{name} on {self.name} is a folder snapshot: it is restored with restic restore", where=self.name)
        cancel = Cancel()
        pipe = _Pipe(on_close_reading=cancel.request)  # a reader done early: restic need not send the rest

        def dump() -> None:
            try:
                self.run(cmd.dump_argv(artifact.stream, f"/{folder}/{name}", self.options()), stdout=pipe.put,
                         cancel=cancel, retry=False)
            except BakError as exc:
                if not cancel.is_set():
                    pipe.fail(WriteFailed(f"reading {folder}/{name} from restic repository {self.name} failed: "
                                          f"{restic_message(exc)}", where=self.name, code="restic_read_failed",
                                          hint="Check the repository: bak verify (restic check)"))
                    return
            pipe.close()

        threading.Thread(target=dump, daemon=True).start()
        return pipe

    def restore_tree(self, artifact: cmd.Artifact, scratch: str) -> str:
        """A folder snapshot restored under `scratch`; returns where its folder landed."""
        root = cmd.tree_root(artifact)
        if root is None:
            raise BadInput(f"{artifact.name} on {self.name} is not a folder snapshot", where=self.name)
        self.run(cmd.restore_argv(artifact.ids[0], scratch, root, self.options()))
        return cmd.restored_root(scratch, root)

    # -- writing ------------------------------------------------------------------------------
    def writer(self, folder: str, name: str, *, expected=None, when: float | None = None,
               sealer: Sealer | None = None) -> ResticWriter:
        if self.backend == "local" and not Path(self.repository, "config").exists():
            self.ensure_repository()
        return ResticWriter(self, folder, name, expected=expected, when=when, sealer=sealer)

    def backup_tree(self, folder: str, name: str, root: str, manifest: str, size: int, *, when: float | None = None,
                    protected: bool = False, progress: Callable[[dict], None] | None = None) -> str:
        """A finished snapshot folder and its manifest as one snapshot; returns its id. A snapshot restic
        saved with files it could not read (exit 3) is forgotten again: it would not be the folder.
        `progress` gets restic's status lines (every few seconds) on a long upload."""
        if self.backend == "local" and not Path(self.repository, "config").exists():
            self.ensure_repository()
        tags = [cmd.TREE, f"path={folder}/{name}", f"size={size}"] + ([cmd.PROTECTED] if protected else [])
        lines = _Lines(progress)
        try:
            self.run(cmd.backup_tree_argv([root, manifest], tags, self.options(when)), stdout=lines.feed)
        except CommandFailed as exc:
            summary = cmd.parse_backup(lines.text())
            if exc.returncode == 3 and summary:  # saved, but without the files restic could not read
                self.forget([summary["snapshot_id"]])
                raise WriteFailed(f"restic could not read all of {name} to back it up into {self.name}: "
                                  f"{restic_message(exc)}", where=self.name, code="restic_failed",
                                  hint="Check that every file of the snapshot folder is readable.") from None
            raise
        finally:
            self.forget_cached()
        summary = cmd.parse_backup(lines.text())
        if summary is None:
            raise WriteFailed(f"restic reported no snapshot for {name}", where=self.name)
        return summary["snapshot_id"]

    def write_small(self, folder: str, name: str, data: bytes | Iterable[bytes], mtime: float | None = None) -> None:
        """`NAME.protected` marks a backup as protected (a tag); anything else is a small artifact of its own
        that replaces an earlier one of that name."""
        if name.endswith(".protected"):
            artifact = self.find(folder, name[: -len(".protected")])
            self.run(cmd.tag_argv(artifact.stream or artifact.ids[0], [cmd.PROTECTED], self.options()))
            self.forget_cached()
            return
        import hashlib

        earlier = self.ids_of(folder, name)  # the recovery kit is rewritten by every create: the newest replaces it
        digest = hashlib.sha256()
        writer = self.writer(folder, name)
        for chunk in chunks_of(data):
            digest.update(chunk)
            writer.write(chunk)
        writer.commit(digest.hexdigest())
        self.forget(earlier)

    # -- removing -----------------------------------------------------------------------------
    def forget(self, ids: list[str]) -> None:
        """One `restic forget` for every snapshot id: the data goes with the next `restic prune`."""
        if ids:
            try:
                self.run(cmd.forget_argv(sorted(set(ids)), self.options()))
                self.forgot = True
            finally:
                self.forget_cached()

    def prune(self) -> None:
        self.run(cmd.prune_argv(self.options()))

    def remove(self, folder: str, name: str) -> None:
        if name.endswith(SIDECAR_SUFFIXES) and not self.ids_of(folder, name):
            return  # a sidecar lives in its backup's seal or tags: it goes with the backup
        self.forget(self.ids_of(folder, name))

    # -- checking -----------------------------------------------------------------------------
    def check(self, part: tuple[int, int] | None) -> dict:
        """`restic check`, reading `part` (n, of N) of the data; restic's own words when it finds damage."""
        try:
            out = self.run(cmd.check_argv(part, self.options()))
        except CommandFailed as exc:
            if exc.code != "restic_failed":
                raise
            return {"ok": False, "errors": True, "message": restic_message(exc)}
        found = cmd.parse_check(out.stdout_text + "\n" + out.stderr_text)
        found["ok"] = not found["errors"]
        return found

    # -- space --------------------------------------------------------------------------------
    def exists(self) -> bool:
        return Path(self.repository).is_dir() if self.backend == "local" else True

    def usage(self) -> Usage | None:
        """Free space of a repository on a local path; a remote backend does not report it (None)."""
        if self.backend != "local":
            return None
        probe = Path(self.repository)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        return Usage(usage.total, usage.free)

    def require_space(self, needed: int) -> None:
        if self.usage() is not None:
            super().require_space(needed)

    def refuse_existing(self, folder: str, name: str) -> None:
        if any(a.name == name for a in self.artifacts(folder)):
            raise Refused(f"{name} already exists on {self.name}; a backup is never overwritten", where=self.name,
                          code="name_taken", hint="Wait a second and run again.")
