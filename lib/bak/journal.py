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

from bak.errors import BakError, JournalBusy
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
HELD_WAIT_S = 10.0


def default_path() -> Path:
    from bak.paths import state_dir

    return state_dir() / "journal.sqlite"


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
    """One connection, one lock (parallel verifies journal from worker threads).

    A damaged journal never stops a backup: it is set aside (`journal.sqlite.damaged-...`), a new one
    is started, and the envelope says so. One held by another process is waited for HELD_WAIT_S, then
    refused, naming who holds it.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self.db = self._open_or_recover()

    @classmethod
    def default(cls) -> "Journal":
        return cls(default_path())

    def close(self) -> None:
        self.db.close()

    def _open_or_recover(self) -> sqlite3.Connection:
        try:
            return self._open()
        except (sqlite3.DatabaseError, OSError) as exc:
            self._set_aside(exc)
            return self._open()

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
        if path.exists() and path.stat().st_size == 0:
            raise sqlite3.DatabaseError("the file is empty (bak never leaves a journal empty: its history was lost)")
        new = not path.exists()
        db = sqlite3.connect(path, timeout=HELD_WAIT_S, isolation_level=None, check_same_thread=False)
        try:
            if new and os.name == "posix":
                os.chmod(path, 0o600)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            db.execute("SELECT max(id) FROM operations").fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            self._raise_if_held(exc)
            raise
        return db

    def _raise_if_held(self, exc: sqlite3.DatabaseError) -> None:
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
            from bak.run.local import processes_holding

            holders = processes_holding(str(self.path))
            who = ", ".join(f"pid {pid} ({command[:80]})" for pid, command in holders) or "another process"
            raise JournalBusy(f"the journal {self.path} is held by {who}; waited {HELD_WAIT_S:.0f}s", where=str(self.path),
                              hint="Wait for that process to finish (or stop it), then run again.") from None

    def _set_aside(self, exc: BaseException) -> None:
        from bak.report import notice

        aside = self.path.with_name(f"{self.path.name}.damaged-{datetime.now():%Y%m%d-%H%M%S}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(self.path) + suffix)
            if part.exists() or part.is_symlink():
                os.replace(part, Path(str(aside) + suffix))
        notice(f"the journal {self.path} could not be read ({exc}); it was kept as {aside} and a new one was started: "
               "earlier history is in that file")

    def _run(self, work):
        """work(db) under the lock; a journal found damaged midway is set aside and the work done on a new one."""
        with self._lock:
            try:
                return work(self.db)
            except sqlite3.DatabaseError as exc:
                self._raise_if_held(exc)
                self.db.close()
                self._set_aside(exc)
                self.db = self._open()
                return work(self.db)

    def start(self, kind: str, target: str | None, details: dict | None = None) -> int:
        row = (kind, target, utcnow(), "running", json.dumps(scrub_obj(details or {}), default=str), os.getpid(),
               socket.gethostname())
        return self._run(lambda db: db.execute(
            "INSERT INTO operations(kind, target, started_at, status, details, pid, hostname) VALUES (?,?,?,?,?,?,?)",
            row).lastrowid)

    def finish(self, op_id: int, status: str, *, bytes_: int | None = None, checksum: str | None = None,
               error_tail: str | None = None, details: dict | None = None) -> None:
        tail = scrub(error_tail)[-ERROR_TAIL_CHARS:] if error_tail else None

        def update(db):
            if details is not None:
                db.execute("UPDATE operations SET details=? WHERE id=?", (json.dumps(scrub_obj(details), default=str), op_id))
            db.execute("UPDATE operations SET ended_at=?, status=?, bytes=?, checksum=?, error_tail=? WHERE id=?",
                       (utcnow(), status, bytes_, checksum, tail, op_id))
        self._run(update)

    def note(self, op_id: int, details: dict) -> None:
        """An operation's details, written now rather than at its end: what a kill would leave behind must be
        in the journal before it exists (see Context.stage)."""
        self._run(lambda db: db.execute("UPDATE operations SET details=? WHERE id=?",
                                        (json.dumps(scrub_obj(details), default=str), op_id)))

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
        rows = self._run(lambda db: db.execute(
            "SELECT json_extract(details, '$.name') FROM operations WHERE kind = 'create' "
            "AND target = ? AND status IN ('ok', 'partial') AND json_valid(details)", (target,)).fetchall())
        return {row[0] for row in rows if isinstance(row[0], str)}

    def latest(self, kind: str, status: str | None = None) -> dict[str, dict]:
        """The newest operation of a kind for each target (optionally only with that status)."""
        where = "kind = ?" + (" AND status = ?" if status else "")
        args = [kind, status] if status else [kind]
        sql = f"SELECT * FROM operations WHERE id IN (SELECT max(id) FROM operations WHERE {where} GROUP BY target)"
        return {row["target"]: row for row in self._rows(sql, args)}

    def counts(self, kind: str, statuses: tuple[str, ...]) -> dict[str, int]:
        """How many operations of a kind ended with one of these statuses, per target."""
        marks = ",".join("?" * len(statuses))
        rows = self._run(lambda db: db.execute(
            f"SELECT target, count(*) FROM operations WHERE kind = ? AND status IN ({marks}) GROUP BY target",
            [kind, *statuses]).fetchall())
        return {target: count for target, count in rows}

    def verdicts_by_copy(self, kind: str) -> dict[str, dict[tuple[str, str], dict]]:
        """The newest verdict (ok or failed: an interrupted run tells nothing) of a kind (verify, drill) on
        each copy of each backup, in one query: {target: {(store, backup name): row}}. Rows that name no
        copy are left out."""
        sql = ("SELECT * FROM operations WHERE id IN (SELECT max(id) FROM operations WHERE kind = ? "
               "AND status IN ('ok', 'failed') AND json_valid(details) "
               "GROUP BY target, json_extract(details, '$.store'), json_extract(details, '$.name'))")
        found: dict[str, dict[tuple[str, str], dict]] = {}
        for row in self._rows(sql, [kind]):
            store, name = row["details"].get("store"), row["details"].get("name")
            if isinstance(row["target"], str) and isinstance(store, str) and isinstance(name, str):
                found.setdefault(row["target"], {})[(store, name)] = row
        return found

    def _rows(self, sql: str, args: list) -> list[dict]:
        def read(db):
            cursor = db.execute(sql, args)
            columns = [c[0] for c in cursor.description]
            return [dict(zip(columns, values)) for values in cursor]
        rows = self._run(read)
        host = socket.gethostname()
        for row in rows:
            row["details"] = _details(row["details"])
            if row["status"] == "running" and row["hostname"] == host and row["pid"] and not _alive(row["pid"]):
                row["status"] = "interrupted"
        return rows


def _details(text) -> dict:
    """A row's details, whatever a damaged or hand-edited journal holds there."""
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {"unreadable": str(text)[:200]}
    return value if isinstance(value, dict) else {"value": value}


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
