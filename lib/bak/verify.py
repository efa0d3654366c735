"""Checksums and format checks in one pass over the bytes: the file is read once, never twice."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from bak.catalog import Backup
from bak.errors import BakError, CommandFailed, VerifyFailed
from bak.run.base import CHUNK, Runner
from bak.stores import Store


class HashingReader:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = CHUNK) -> bytes:
        data = self.raw.read(n if n and n > 0 else CHUNK)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def recorded_sha256(store: Store, backup: Backup) -> str | None:
    sidecar = backup.name + ".sha256"
    if sidecar not in backup.sidecars:
        return None
    line = store.read_small(backup.folder, sidecar, 4096).decode("utf-8", "replace").split()
    return line[0].lower() if line else None


def check_file(store: Store, backup: Backup, runner: Runner | None = None, checker: list[str] | None = None) -> dict:
    """sha256 against the sidecar, and `checker` (an argv reading the file on stdin), in one read."""
    expected = recorded_sha256(store, backup)
    checker_error = read_error = None
    with store.open_read(backup.folder, backup.name) as raw:
        reader = HashingReader(raw)
        try:
            if checker:
                try:
                    runner.run(checker, stdin=reader)
                except CommandFailed as exc:
                    checker_error = exc.stderr_tail.strip().splitlines()[-1] if exc.stderr_tail.strip() else exc.message
            reader.drain()  # a checker that stops early must not leave the hash short
        except (BakError, OSError) as exc:  # the copy itself could not be read to its end
            read_error = getattr(exc, "message", None) or str(exc)
    actual = reader.hash.hexdigest()
    result = {"store": store.name, "name": backup.name, "size": reader.size, "sha256": actual,
              "checksum": "missing" if expected is None else ("ok" if expected == actual else "mismatch"),
              "format": None if not checker else ("ok" if checker_error is None else "failed")}
    problems = []
    if read_error:
        problems.append(f"could not be read: {read_error}")
        checker_error = None  # the checker only saw the stream break off
        result.update(checksum="unreadable", format=None)
    else:
        problems = sha256_problems(expected, actual)
    if checker_error:
        problems.append(f"{checker[0].rsplit('/', 1)[-1]}: {checker_error}")
    return passed(store, backup, result, problems)


def sha256_problems(expected: str | None, actual: str) -> list[str]:
    if expected is None:
        return ["no .sha256 sidecar"]
    if expected != actual:
        return [f"sha256 mismatch: sidecar says {expected[:16]}..., file is {actual[:16]}..."]
    return []


def passed(store: Store, backup: Backup, result: dict, problems: list[str]) -> dict:
    """`result` when nothing is wrong; else one VerifyFailed naming the file and every problem."""
    if problems:
        raise VerifyFailed(f"{backup.name} on {store.name}: " + "; ".join(problems), where=f"{store.name}:{backup.name}",
                           details={"result": result})
    return result
