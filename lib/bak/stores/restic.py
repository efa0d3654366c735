"""A restic repository (local path) as a store: each artifact is one `restic backup --stdin` snapshot.

A snapshot counts as complete only once bak tags it `size=N` and `sha256=X` after the last byte.
A killed run leaves nothing, or (when restic outlived it and saved what it had read) an untagged
snapshot, listed as a partial and removed by the next run, as with `NAME.partial` files. The
password reaches restic through a 0600 file, never argv.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterable

from bak.errors import BadInput, BakError, WriteFailed
from bak.naming import PARTIAL_SUFFIX, SIDECAR_SUFFIXES
from bak.run.local import LocalRunner
from bak.secrets import read_secret
from bak.stores.base import ArtifactWriter, Entry, Store, Usage, chunks_of, sha256_line

TAG = "bak"


class _Pipe:
    """Chunks pushed by one thread, read as a stream by another (bounded: back-pressure, no big buffer)."""

    def __init__(self):
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._done = False

    def put(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def close(self) -> None:
        self._queue.put(None)

    def fail(self, exc: BaseException) -> None:
        """The writer broke off: the reader gets this error instead of a quiet, short end."""
        self._queue.put(exc)

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        chunk = self._queue.get()
        if chunk is None or isinstance(chunk, BaseException):
            self._done = True
            if chunk is not None:
                raise chunk
            return b""
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        while not self._done and not self._queue.empty():
            self.read()


def restic_message(exc: BakError) -> str:
    """restic's own words for what failed (its last stderr lines), not just an exit status."""
    lines = [line for line in (getattr(exc, "stderr_tail", "") or "").splitlines() if line.strip()]
    return "; ".join(lines[-3:]) if lines else exc.message


def backup_argv(folder: str, name: str) -> list[str]:
    return ["restic", "backup", "--stdin", "--stdin-filename", f"{folder}/{name}", "--tag", TAG, "--host", TAG, "--json"]


class ResticWriter(ArtifactWriter):
    def __init__(self, store: "ResticStore", folder: str, name: str):
        self.store, self.name, self.folder = store, name, folder
        self.location = store.location(folder, name)
        store.ensure_repository()
        self._pipe = _Pipe()
        self._result: dict = {}
        self._thread = threading.Thread(target=self._run, args=(backup_argv(folder, name),), daemon=True)
        self._thread.start()

    def _run(self, argv: list[str]) -> None:
        try:
            self._result["out"] = self.store.run(argv, stdin=self._pipe)
        except BakError as exc:
            self._result["error"] = exc

    def write(self, chunk: bytes) -> None:
        if "error" in self._result:
            raise WriteFailed(f"restic backup into {self.store.name} failed: {self._result['error'].message}",
                              where=self.store.name)
        self._pipe.put(chunk)
        self.size += len(chunk)

    def commit(self, sha256: str, sidecars: dict[str, bytes] | None = None) -> None:
        """The stream's snapshot, then each sidecar's, then the tag that makes the artifact count (last)."""
        self._pipe.close()
        self._thread.join()
        if "error" in self._result:
            raise WriteFailed(f"restic backup into {self.store.name} failed: {self._result['error'].message}",
                              where=self.store.name, hint="Check the repository (restic check) and its free space.")
        summary = [json.loads(line) for line in self._result["out"].stdout_text.splitlines() if '"summary"' in line]
        snapshot = summary[-1]["snapshot_id"]
        for name, data in (sidecars or {}).items():
            self.store.write_small(self.folder, name, data)
        self.store.run(["restic", "tag", "--add", f"size={self.size}", "--add", f"sha256={sha256}", snapshot])
        self.store._snapshots = None

    def abort(self) -> None:
        self._pipe.close()
        self._thread.join()
        self.store._snapshots = None
        # restic saw an early end of input and saved what it had: that untagged snapshot is a partial.
        for entry in self.store.list_snapshots():
            if entry["name"] == self.name and not entry["complete"]:
                self.store.forget(entry["id"])


class ResticStore(Store):
    kind = "restic"
    host_name = "local"

    def __init__(self, name: str, repository: str, password: dict):
        if not repository.startswith(("/", "~")):
            raise BadInput(f"restic destination {name}: only repositories on a local path are supported",
                           where=f"destinations.{name}.repository", hint="Mount the remote storage, or use an ssh destination.")
        self.name = name
        self.repository = str(Path(repository).expanduser())
        self.password_ref = password
        self.runner = LocalRunner()
        self._password: str | None = None
        self._initialised = False
        self._snapshots: list[dict] | None = None  # each restic call pays its key derivation: list once

    def run(self, argv: list[str], **kwargs):
        if self._password is None:
            self._password = read_secret(self.password_ref, f"destinations.{self.name}.password")
        with self.runner.secret_file(self._password.encode() + b"\n") as password_file:
            env = {"RESTIC_REPOSITORY": self.repository, "RESTIC_PASSWORD_FILE": password_file, "RESTIC_PROGRESS_FPS": "0"}
            if not self._initialised:
                if self.runner.run(["restic", "cat", "config"], env=env, check=False).returncode != 0:
                    self.runner.run(["restic", "init"], env=env)
                # A killed restic leaves its lock behind; `unlock` removes only stale ones.
                self.runner.run(["restic", "unlock"], env=env)
                self._initialised = True
            return self.runner.run(argv, env=env, **kwargs)

    def ensure_repository(self) -> None:
        """Create the repository on first use, before any stream starts."""
        self.run(["restic", "cat", "config"])

    def location(self, folder: str, name: str = "") -> str:
        return f"restic:{self.repository}/{folder}/{name}"

    def list_snapshots(self) -> list[dict]:
        if self._snapshots is None:
            self._snapshots = self._read_snapshots()
        return self._snapshots

    def _read_snapshots(self) -> list[dict]:
        rows = json.loads(self.run(["restic", "snapshots", "--json", "--tag", TAG]).stdout_text or "[]") or []
        snapshots = []
        for row in rows:
            tags = dict(t.split("=", 1) for t in row.get("tags", []) if "=" in t)
            folder, _, name = row["paths"][0].lstrip("/").rpartition("/")
            snapshots.append({"id": row["id"], "folder": folder, "name": name, "time": row["time"],
                              "complete": "sha256" in tags, "size": int(tags.get("size", 0)), "sha256": tags.get("sha256")})
        return snapshots

    def _find(self, folder: str, name: str) -> dict:
        for snapshot in self.list_snapshots():
            if snapshot["folder"] == folder and snapshot["name"] == name and snapshot["complete"]:
                return snapshot
        raise FileNotFoundError(f"{folder}/{name} in {self.name}")

    def list(self, folder: str) -> list[Entry]:
        entries = []
        for snapshot in self.list_snapshots():
            if snapshot["folder"] != folder:
                continue
            when = datetime.fromisoformat(snapshot["time"][:26].rstrip("Z")).timestamp()
            if snapshot["complete"]:
                entries.append(Entry(snapshot["name"], snapshot["size"], when, False))
                if not snapshot["name"].endswith(SIDECAR_SUFFIXES):
                    entries.append(Entry(snapshot["name"] + ".sha256", 0, when, False))
            else:
                entries.append(Entry(snapshot["name"] + PARTIAL_SUFFIX, 0, when, False))
        return entries

    def writer(self, folder: str, name: str) -> ResticWriter:
        return ResticWriter(self, folder, name)

    def read_small(self, folder: str, name: str, limit: int = 1 << 20) -> bytes:
        if name.endswith(".sha256"):
            snapshot = self._find(folder, name[: -len(".sha256")])
            return sha256_line(snapshot["sha256"], snapshot["name"])
        with self.open_read(folder, name) as stream:
            return b"".join(iter(lambda: stream.read(1 << 20), b""))[:limit]

    def write_small(self, folder: str, name: str, data: bytes | Iterable[bytes], mtime: float | None = None) -> None:
        """A sidecar (.meta.json, .globals.sql) or the recovery kit is a small snapshot of its own, tagged like
        an artifact; it replaces the snapshots an earlier write of that name made."""
        import hashlib

        earlier = [s["id"] for s in self.list_snapshots() if s["folder"] == folder and s["name"] == name and s["complete"]]
        digest = hashlib.sha256()
        writer = ResticWriter(self, folder, name)
        for chunk in chunks_of(data):
            digest.update(chunk)
            writer.write(chunk)
        writer.commit(digest.hexdigest())
        if earlier:
            self.run(["restic", "forget", *earlier])
            self._snapshots = None

    def open_read(self, folder: str, name: str) -> BinaryIO:
        snapshot = self._find(folder, name)
        pipe = _Pipe()

        def dump() -> None:
            try:
                self.run(["restic", "dump", snapshot["id"], f"/{folder}/{name}"], stdout=pipe.put)
            except BakError as exc:
                pipe.fail(WriteFailed(f"reading {folder}/{name} from restic repository {self.name} failed: "
                                      f"{restic_message(exc)}", where=self.name, code="restic_read_failed",
                                      hint="Check the repository: restic check --read-data"))
            else:
                pipe.close()

        threading.Thread(target=dump, daemon=True).start()
        return pipe

    def forget(self, snapshot_id: str) -> None:
        self.run(["restic", "forget", "--prune", snapshot_id])
        self._snapshots = None

    def remove(self, folder: str, name: str) -> None:
        if name.endswith(".sha256"):
            return  # a tag of the snapshot, gone with it
        partial = name.endswith(PARTIAL_SUFFIX)
        wanted = name[: -len(PARTIAL_SUFFIX)] if partial else name
        for snapshot in self.list_snapshots():
            if snapshot["folder"] == folder and snapshot["name"] == wanted and snapshot["complete"] != partial:
                self.forget(snapshot["id"])

    def exists(self) -> bool:
        return Path(self.repository).is_dir()

    def usage(self) -> Usage:
        probe = Path(self.repository)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        return Usage(usage.total, usage.free)
