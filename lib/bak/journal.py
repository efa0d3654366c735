"""Every create, verify, restore, drill and prune, in SQLite: start, end, status, bytes, checksum, error tail."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from bak.errors import BakError
from bak.secrets import scrub, scrub_obj

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    target TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    status TEXT NOT NULL,
    bytes INTEGER,
    checksum TEXT,
    error_tail TEXT,
    details TEXT,
    pid INTEGER,
    hostname TEXT
);
CREATE INDEX IF NOT EXISTS operations_target ON operations(target, started_at);
"""

ERROR_TAIL_CHARS = 4000


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Operation:
    """What the caller fills in while the operation runs."""

    def __init__(self, journal: "Journal", op_id: int):
        self.journal = journal
        self.id = op_id
        self.bytes: int | None = None
        self.checksum: str | None = None
        self.details: dict = {}
        self.status = "ok"
        self.error_tail: str | None = None


class Journal:
    def __init__(self, path: Path):
        self.path = path
        new = not path.exists()
        # Parallel verifies journal from worker threads: one connection, one lock.
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        if new and os.name == "posix":
            os.chmod(path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    @classmethod
    def default(cls) -> "Journal":
        from bak.paths import state_dir

        return cls(state_dir() / "journal.sqlite")

    def close(self) -> None:
        self.db.close()

    def start(self, kind: str, target: str | None, details: dict | None = None) -> int:
        with self._lock:
            return self._start(kind, target, details)

    def _start(self, kind: str, target: str | None, details: dict | None) -> int:
        cur = self.db.execute(
            "INSERT INTO operations(kind, target, started_at, status, details, pid, hostname) VALUES (?,?,?,?,?,?,?)",
            (kind, target, utcnow(), "running", json.dumps(scrub_obj(details or {})), os.getpid(), socket.gethostname()))
        return cur.lastrowid

    def finish(self, op_id: int, status: str, *, bytes_: int | None = None, checksum: str | None = None,
               error_tail: str | None = None, details: dict | None = None) -> None:
        tail = scrub(error_tail)[-ERROR_TAIL_CHARS:] if error_tail else None
        with self._lock:
            self._finish(op_id, status, bytes_, checksum, tail, details)

    def _finish(self, op_id, status, bytes_, checksum, tail, details) -> None:
        if details is not None:
            self.db.execute("UPDATE operations SET details=? WHERE id=?", (json.dumps(scrub_obj(details), default=str), op_id))
        self.db.execute("UPDATE operations SET ended_at=?, status=?, bytes=?, checksum=?, error_tail=? WHERE id=?",
                        (utcnow(), status, bytes_, checksum, tail, op_id))

    @contextmanager
    def operation(self, kind: str, target: str | None, details: dict | None = None) -> Iterator[Operation]:
        """Journals start and end; an exception is recorded as `failed` with its tail, then re-raised."""
        op = Operation(self, self.start(kind, target, details))
        op.details = dict(details or {})
        try:
            yield op
        except BaseException as exc:
            tail = _error_tail(exc)
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.finish(op.id, status, bytes_=op.bytes, checksum=op.checksum, error_tail=tail, details=op.details)
            raise
        self.finish(op.id, op.status, bytes_=op.bytes, checksum=op.checksum, error_tail=op.error_tail, details=op.details)

    def query(self, *, target: str | None = None, kind: str | None = None, since: str | None = None,
              status: str | None = None, limit: int = 1000) -> list[dict]:
        sql = "SELECT * FROM operations WHERE 1=1"
        args: list = []
        for column, value in (("target", target), ("kind", kind), ("status", status)):
            if value:
                sql += f" AND {column} = ?"
                args.append(value)
        if since:
            sql += " AND started_at >= ?"
            args.append(since)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return self._rows(sql, args)

    def names_created(self, target: str) -> set[str]:
        """Every backup name a create of this target made (a failed one made nothing: its partial is resumed)."""
        with self._lock:
            rows = self.db.execute("SELECT json_extract(details, '$.name') FROM operations WHERE kind = 'create' "
                                   "AND target = ? AND status IN ('ok', 'partial') AND json_valid(details)",
                                   (target,)).fetchall()
        return {row[0] for row in rows if isinstance(row[0], str)}

    def latest(self, kind: str, status: str | None = None) -> dict[str, dict]:
        """The newest operation of a kind for each target (optionally only with that status)."""
        where = "kind = ?" + (" AND status = ?" if status else "")
        args = [kind, status] if status else [kind]
        sql = f"SELECT * FROM operations WHERE id IN (SELECT max(id) FROM operations WHERE {where} GROUP BY target)"
        return {row["target"]: row for row in self._rows(sql, args)}

    def _rows(self, sql: str, args: list) -> list[dict]:
        with self._lock:
            cursor = self.db.execute(sql, args)
            columns = [c[0] for c in cursor.description]
            rows = [dict(zip(columns, values)) for values in cursor]
        host = socket.gethostname()
        for row in rows:
            row["details"] = json.loads(row["details"]) if row["details"] else {}
            if row["status"] == "running" and row["hostname"] == host and row["pid"] and not _alive(row["pid"]):
                row["status"] = "interrupted"
        return rows


def _error_tail(exc: BaseException) -> str:
    if isinstance(exc, BakError):
        tail = getattr(exc, "stderr_tail", "") or ""
        return f"{exc.code}: {exc.message}" + (f"\n{tail}" if tail else "")
    return f"{type(exc).__name__}: {exc}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
