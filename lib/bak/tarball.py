"""What a .tar.gz holds, entry by entry, read by Python's gzip and tarfile: not by the tar that wrote it.

Every member's data is read and hashed and gzip's CRC is checked at the end, so a flipped byte or a
truncated file is found. The index has the rows of a snapshot manifest (type, mode, owner, size,
mtime, link target, sha256), so a restored volume is compared with it like a restored snapshot
folder (manifest.differences). It is built while the bytes stream elsewhere (to a store, to the
restoring tar), on a thread: the archive is read once.
"""

from __future__ import annotations

import gzip
import hashlib
import queue
import tarfile
import threading
import zlib
from typing import BinaryIO

from bak import manifest
from bak.run.base import CHUNK

_KINDS = {tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.CONTTYPE: "f", tarfile.GNUTYPE_SPARSE: "f",
          tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l", tarfile.CHRTYPE: "device", tarfile.BLKTYPE: "device",
          tarfile.FIFOTYPE: "special"}


class Damaged(Exception):
    """The bytes are not a complete, readable .tar.gz."""


def member_path(name: str) -> str:
    """`./a/b/` -> `a/b`; the archive's root `./` -> `.` (the paths manifest rows use)."""
    path = name.rstrip("/")
    while path.startswith("./"):
        path = path[2:]
    return path or "."


def read_index(stream: BinaryIO) -> dict[str, dict]:
    """Manifest rows by path for a .tar.gz read to its very end; raises Damaged."""
    rows: dict[str, dict] = {}
    try:
        unzipped = gzip.GzipFile(fileobj=stream, mode="rb")
        with tarfile.open(fileobj=unzipped, mode="r|") as archive:
            for member in archive:
                rows[member_path(member.name)] = _row(archive, member, rows)
        while unzipped.read(CHUNK):  # past tar's end marker to gzip's own end: its CRC and length are checked there
            pass
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise Damaged(str(exc) or type(exc).__name__) from None
    return rows


def outside(name: str) -> bool:
    """A member name GNU tar will not extract where it belongs: absolute, or climbing with `..`
    ("Member name contains '..'"). A volume bak tars holds only `./...` names."""
    return name.startswith("/") or ".." in name.split("/")


def _row(archive: tarfile.TarFile, member: tarfile.TarInfo, seen: dict[str, dict]) -> dict:
    path = member_path(member.name)
    for name in (member.name, member.linkname if member.islnk() else ""):
        if outside(name):
            raise Damaged(f"member {name[:200]!r} is outside the volume: a restore refuses it")
    if member.islnk():  # a hard link restores as one more name of a file already in the archive
        linked = seen.get(member_path(member.linkname))
        if linked is None:
            raise Damaged(f"{path} is a hard link to {member.linkname}, which the archive does not hold before it")
        return {**linked, "path": path}
    kind = _KINDS.get(member.type, "special")
    row = {"path": path, "type": kind, "mode": member.mode & 0o7777, "uid": member.uid, "gid": member.gid}
    if kind == "f":
        digest = hashlib.sha256()
        size = 0
        data = archive.extractfile(member)
        while chunk := data.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if size != member.size:
            raise Damaged(f"{path}: {size} bytes, its header says {member.size}")
        row.update(size=size, mtime=int(member.mtime), sha256=digest.hexdigest())
    elif kind == "l":
        row["target"] = member.linkname
    return row


def as_manifest(rows: dict[str, dict]) -> manifest.Manifest:
    """The index as a manifest to compare a restored tree with (manifest.differences)."""
    return manifest.Manifest({"bak_manifest": manifest.VERSION, "checksum": "sha256"}, rows)


class _QueueFile:
    """The read side of chunks handed over by another thread; b"" ends it."""

    def __init__(self, chunks: queue.Queue):
        self._chunks = chunks
        self._chunk = b""
        self._offset = 0
        self._ended = False

    def read(self, n: int = -1) -> bytes:
        parts, wanted = [], n if n >= 0 else float("inf")
        while wanted > 0:
            if self._offset == len(self._chunk):
                if self._ended:
                    break
                self._chunk, self._offset = self._chunks.get(), 0
                if not self._chunk:
                    self._ended = True
                    break
            part = self._chunk[self._offset:self._offset + int(min(wanted, len(self._chunk) - self._offset))]
            self._offset += len(part)
            wanted -= len(part)
            parts.append(part)
        return b"".join(parts)

    def drain(self) -> None:
        while not self._ended:
            if not self._chunks.get():
                self._ended = True


class Indexer:
    """`feed()` it the archive's bytes as they stream elsewhere, `result()` at the end: read_index on a thread."""

    def __init__(self):
        self._chunks: queue.Queue = queue.Queue(maxsize=16)
        self._source = _QueueFile(self._chunks)
        self._rows: dict[str, dict] | None = None
        self._error: Damaged | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._rows = read_index(self._source)
        except Damaged as exc:
            self._error = exc
        finally:
            self._source.drain()  # the feeder never blocks on a reader that stopped early

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self._chunks.put(chunk)

    def close(self) -> None:
        """The stream ended (or was cut short)."""
        if not self._closed:
            self._closed = True
            self._chunks.put(b"")
            self._thread.join()

    def result(self) -> dict[str, dict]:
        self.close()
        if self._error is not None:
            raise self._error
        return self._rows


class IndexingReader:
    """A stream read by someone else (the restoring tar's stdin) that the indexer reads too."""

    def __init__(self, raw: BinaryIO, indexer: Indexer):
        self.raw, self.indexer = raw, indexer

    def read(self, n: int = CHUNK) -> bytes:
        data = self.raw.read(n)
        self.indexer.feed(data)
        return data
