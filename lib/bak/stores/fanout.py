"""One stream of bytes, written atomically to several stores at once and hashed once.

The hash runs on its own thread (hashlib releases the GIL) so it overlaps the writes:
the stream is read once, never re-read to checksum it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass, field

from bak.errors import BakError, WriteFailed
from bak.stores.base import ArtifactWriter, Store

_QUEUE_CHUNKS = 16


class BackgroundHash:
    def __init__(self):
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def feed(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._hash.hexdigest()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


@dataclass
class Copy:
    store: str
    location: str
    ok: bool = False
    size: int = 0
    error: dict | None = None


@dataclass
class FanOutResult:
    name: str
    sha256: str | None
    size: int
    copies: list[Copy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.copies) and all(c.ok for c in self.copies)


class FanOut:
    """Use as a sink: `fan.write(chunk)`; then `commit()` or `abort()`.

    A store that fails mid-stream is dropped and reported; the others carry on, so one
    full destination does not cost the other copies. When every store has failed, the
    stream is stopped with WriteFailed.
    """

    def __init__(self, stores: list[Store], folder: str, name: str):
        self.name = name
        self.hash = BackgroundHash()
        self._digest: str | None = None
        self.size = 0
        self.writers: list[tuple[Copy, ArtifactWriter | None]] = []
        for store in stores:
            copy = Copy(store.name, store.location(folder, name))
            try:
                self.writers.append((copy, store.writer(folder, name)))
            except BakError as exc:
                copy.error = exc.to_error()
                self.writers.append((copy, None))
        self._check_alive()

    def _check_alive(self) -> None:
        if not any(w for _, w in self.writers):
            self.hash.stop()
            errors = [c.error["message"] for c, _ in self.writers if c.error]
            raise WriteFailed("no destination could be written: " + "; ".join(errors),
                              code=next((c.error["code"] for c, _ in self.writers if c.error), "write_failed"),
                              hint=next((c.error["hint"] for c, _ in self.writers if c.error and c.error["hint"]), None))

    def write(self, chunk: bytes) -> None:
        self.hash.feed(chunk)
        self.size += len(chunk)
        lost = False
        for index, (copy, writer) in enumerate(self.writers):
            if writer is None:
                continue
            try:
                writer.write(chunk)
            except BakError as exc:
                copy.error = exc.to_error()
                writer.abort()
                self.writers[index] = (copy, None)
                lost = True
        if lost:
            self._check_alive()

    def finish(self) -> str:
        """The stream is complete: its sha256 (before commit, for sidecars that record it)."""
        if self._digest is None:
            self._digest = self.hash.hexdigest()
        return self._digest

    def commit(self, sidecars: dict[str, bytes] | None = None) -> FanOutResult:
        """Each store gets `sidecars` and the .sha256, then the final name."""
        digest = self.finish()
        result = FanOutResult(self.name, digest, self.size)
        for copy, writer in self.writers:
            if writer is not None:
                try:
                    writer.commit(digest, sidecars)
                    copy.ok, copy.size = True, writer.size
                except BakError as exc:
                    copy.error = exc.to_error()
                    writer.abort()
            result.copies.append(copy)
        return result

    def abort(self) -> None:
        self.hash.stop()
        for _, writer in self.writers:
            if writer is not None:
                writer.abort()
