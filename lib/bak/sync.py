"""bak sync: copy backups that already exist (on the NFS, a local disk) into a restic repository.

The "1" of 3-2-1 for backups made before the repository was added, or while it was unreachable.
Each backup missing from the repository is read once from the first destination that holds a
checked copy: its bytes are hashed on the way and must match its .sha256 sidecar, else restic is
stopped before it saves anything; a folder snapshot must match its manifest's listing. Each copy
is a snapshot of its own, sealed only once complete, and keeps the backup's own time: a killed
sync leaves what it finished, the next one removes the leftover and goes on. Newest first.
"""

from __future__ import annotations

import time
from datetime import datetime

from bak import catalog
from bak.actions import Session
from bak.catalog import Backup
from bak.config import Config, Target
from bak.errors import BadInput, BakError
from bak.locks import target_lock
from bak.methods.base import clear_leftovers
from bak.report import Outcome, human_size
from bak.run.base import CHUNK
from bak.stores import Store, open_store
from bak.stores.restic import REPOSITORY_STATES, Sealer
from bak.verify import HashingReader, recorded_sha256

PROGRESS_EVERY_S = 5.0
# What stops a whole sync: the repository itself cannot be written (not one backup's problem).
REPOSITORY_FAILURES = (*REPOSITORY_STATES, "tool_missing")


def chosen_targets(config: Config, names: tuple[str, ...], to: str) -> list[Target]:
    dest = config.destinations.get(to)
    if dest is None:
        raise BadInput(f"no destination named {to!r}", where="--to",
                       hint="Destinations: " + ", ".join(sorted(config.destinations)))
    if dest.kind != "restic":
        raise BadInput(f"{to} is a {dest.kind} destination: bak sync copies into a restic repository", where="--to")
    targets = config.select(names)
    if names:
        outside = [t.name for t in targets if to not in t.destinations]
        if outside:
            raise BadInput(f"{to} is not a destination of {', '.join(outside)}", where="--target",
                           hint=f"Add {to} to their destinations first: a copy there must be one bak keeps track of.")
    return [t for t in targets if to in t.destinations]


def missing(session: Session, target: Target, restic: Store, since: datetime | None) -> list[tuple[Store, Backup]]:
    """What the repository lacks, newest first, each from the first destination with a checked copy."""
    have = {b.name for b in catalog.scan(restic, target).backups}
    found: dict[str, tuple[Store, Backup]] = {}
    for name in target.destinations:
        if name == restic.name:
            continue
        store = open_store(session.config.destinations[name], session.hosts)
        for backup in catalog.scan(store, target).backups:
            if backup.name in have or backup.name in found or backup.in_future(session.ctx.now):
                continue
            if since and backup.when < since or not backup.has_checksum:
                continue
            found[backup.name] = (store, backup)
    return sorted(found.values(), key=lambda pair: (pair[1].when, pair[1].name), reverse=True)


class Progress:
    """A line every PROGRESS_EVERY_S on a long copy: how far, how fast."""

    def __init__(self, say, label: str, total: int | None):
        self.say, self.label, self.total = say, label, total
        self.started = self.last = time.monotonic()
        self.done = 0

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = self.done / max(now - self.started, 1e-6)
            of = f" of {human_size(self.total)}" if self.total else ""
            self.say(f"{self.label}: {human_size(self.done)}{of} ({human_size(int(rate))}/s)")


def file_writer(store: Store, backup: Backup, restic: Store, sealer: Sealer):
    """The repository's writer for one file artifact, its restic already started: what the copy is checked
    against is known beforehand, the .sha256 and the other sidecars."""
    expected = recorded_sha256(store, backup)
    sidecars = {name: store.read_small(backup.folder, name, 64 << 20) for name in backup.sidecars
                if not name.endswith(".sha256")}
    return restic.writer(backup.folder, backup.name, expected=(backup.size, expected, sidecars),
                         when=backup.when.timestamp(), sealer=sealer)


def copy_file(session: Session, store: Store, backup: Backup, writer) -> int:
    """One file artifact: read once, hashed on the way, saved only when it matches its .sha256 (then
    waiting for its seal). Returns its size."""
    progress = Progress(session.ctx.progress, f"{backup.name} from {store.name} to {writer.store.name}", backup.size)
    try:
        with store.open_read(backup.folder, backup.name) as raw:
            reader = HashingReader(raw)
            while chunk := reader.read(CHUNK):
                writer.write(chunk)
                progress.add(len(chunk))
    except BaseException:
        writer.abort()
        raise
    writer.commit(reader.hash.hexdigest(), writer.expected_sidecars)
    return reader.size


def sync(config: Config, names: tuple[str, ...], to: str, *, since: datetime | None = None,
         limit_upload_kib: int | None = None, dry_run: bool = False, progress=None) -> Outcome:
    targets = chosen_targets(config, names, to)
    outcome = Outcome({"to": to, "dry_run": dry_run, "targets": [], "copied": 0, "bytes": 0})
    with Session(config, progress) as session:
        restic = open_store(config.destinations[to], session.hosts)
        if limit_upload_kib:
            restic.limit_upload_kib = limit_upload_kib
        for target in targets:
            entry = {"target": target.name, "status": "planned" if dry_run else "ok", "present": 0, "copied": [],
                     "failed": [], "planned": []}
            outcome.result["targets"].append(entry)
            try:
                if dry_run:
                    _plan(session, target, restic, since, entry)
                else:
                    with target_lock(target.name, "sync"):
                        _sync_target(session, target, restic, since, entry, outcome)
            except BakError as exc:
                entry.update(status="failed", error=exc.message)
                outcome.failed(exc)
                if exc.code in REPOSITORY_FAILURES:
                    break
        outcome.warnings.extend(session.ctx.warnings)
    return outcome


def _plan(session: Session, target: Target, restic: Store, since: datetime | None, entry: dict) -> None:
    todo = missing(session, target, restic, since)
    entry["present"] = len(catalog.scan(restic, target).backups)
    entry["planned"] = [{"name": b.name, "from": s.name, "size": b.size} for s, b in todo]
    entry["to_copy"], entry["to_copy_bytes"] = len(todo), sum(b.size or 0 for _, b in todo)


class _Run:
    """One target's copies: each journaled from its start, and counted (journal, result) once sealed."""

    def __init__(self, session: Session, target: Target, restic: Store, entry: dict, outcome: Outcome):
        self.session, self.target, self.restic, self.entry, self.outcome = session, target, restic, entry, outcome
        self.sealer = Sealer(restic)
        self.waiting: dict[str, tuple[int, dict]] = {}  # upload name -> (journal id, its result row)

    def copy(self, store: Store, backup: Backup, writer) -> None:
        journal = self.session.journal
        op = journal.start("sync", self.target.name, {"from": store.name, "to": self.restic.name, "name": backup.name})
        started = time.monotonic()
        row = {"name": backup.name, "from": store.name, "size": backup.size}
        try:
            if backup.is_dir:
                from bak.methods import restic_tree

                restic_tree.upload(self.session.ctx, self.restic, store, backup.folder, backup.name,
                                   when=backup.when.timestamp(), protected=backup.protected)
                self._counted(op, row, started)
                return
            writer = writer or file_writer(store, backup, self.restic, self.sealer)
            row["size"] = copy_file(self.session, store, backup, writer)
            row["sha256"] = writer.expected_sha256
            row["duration_s"] = round(time.monotonic() - started, 3)
            self.waiting[backup.name] = (op, row)
        except BakError as exc:
            self._failed(op, row, exc)
            if exc.code in REPOSITORY_FAILURES:  # the repository cannot take a seal either
                for waiting_op, waiting_row in self.waiting.values():
                    self._failed(waiting_op, waiting_row, exc)
                self.waiting.clear()
                raise
        if self.sealer.due():
            self.seal()

    def seal(self) -> None:
        """The pending uploads count from here on (or, if the seal fails, none of them does)."""
        try:
            sealed = self.sealer.seal()
        except BakError as exc:
            for op, row in self.waiting.values():
                self._failed(op, row, exc)
            self.waiting.clear()
            raise
        for upload in sealed:
            op, row = self.waiting.pop(upload.name)
            self._counted(op, row)

    def _counted(self, op: int, row: dict, started: float | None = None) -> None:
        if started is not None:
            row["duration_s"] = round(time.monotonic() - started, 3)
        self.session.journal.finish(op, "ok", bytes_=row["size"], checksum=row.pop("sha256", None))
        self.entry["copied"].append(row)
        self.outcome.result["copied"] += 1
        self.outcome.result["bytes"] += row["size"] or 0

    def _failed(self, op: int, row: dict, exc: BakError) -> None:
        self.session.journal.finish(op, "failed", error_tail=f"{exc.code}: {exc.message}")
        self.entry["failed"].append({"name": row["name"], "from": row["from"], "error": exc.message})
        self.entry["status"] = "failed" if exc.code in REPOSITORY_FAILURES else "partial"
        self.outcome.failed(exc)


def _sync_target(session: Session, target: Target, restic: Store, since: datetime | None, entry: dict,
                 outcome: Outcome) -> None:
    listing = catalog.scan(restic, target)
    clear_leftovers(session.ctx, restic, listing)
    todo = missing(session, target, restic, since)
    entry["present"] = len(listing.backups)
    run = _Run(session, target, restic, entry, outcome)
    ahead = None  # the next file's writer, started while this one copies: restic's key derivation is off the path
    try:
        for index, (store, backup) in enumerate(todo):
            writer, ahead = ahead, None
            following = todo[index + 1] if index + 1 < len(todo) else None
            if following and not following[1].is_dir:
                try:
                    ahead = file_writer(following[0], following[1], restic, run.sealer)
                except BakError:
                    ahead = None  # met again, and reported, when its turn comes
            run.copy(store, backup, writer)
        run.seal()
    finally:
        if ahead is not None:
            ahead.abort()
