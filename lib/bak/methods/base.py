"""What every method gets (Context) and provides (Method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from bak import naming
from bak.catalog import Backup, Listing
from bak.config import Config, Target
from bak.errors import Refused, VerifyFailed
from bak.journal import Journal, Operation
from bak.run import Hosts
from bak.stores import Store


@dataclass
class Context:
    config: Config
    hosts: Hosts
    journal: Journal
    now: datetime
    progress: Callable[[str], None] = lambda message: None
    warnings: list[str] = field(default_factory=list)
    operation: Operation | None = None  # the restore or drill running, for stage()

    def stage(self, where: str) -> None:
        """Journal `where` (a folder, a database, a volume a restore or drill builds) before it is made: a run
        killed meanwhile leaves it, and the next restore or drill of the target removes it (see Method.remove_stage)."""
        if self.operation is not None:
            self.operation.details.setdefault("stages", []).append(where)
            self.journal.note(self.operation.id, self.operation.details)

    def unstage(self, where: str) -> None:
        """`where` is finished (renamed to its final name) or removed: nothing to clean up any more."""
        stages = self.operation.details.get("stages", []) if self.operation is not None else []
        if where in stages:
            stages.remove(where)
            self.journal.note(self.operation.id, self.operation.details)


class Method:
    name: str
    single_files = False  # a restore can give back one path of a backup (--file)
    boots = False  # a restored copy can be started (a drill with --boot)

    def preflight(self, ctx: Context, target: Target) -> None:
        """What a dry run can check of the source without writing anything (it is there, it answers);
        raises what the backup would."""

    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        """Make one backup of `target` into every store; returns the per-target result."""
        raise NotImplementedError

    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """Check one backup: checksum plus the format's own check. Raises VerifyFailed."""
        raise NotImplementedError

    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        raise NotImplementedError

    def check_restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                      force: bool, options: dict) -> dict:
        """What a restore would meet, checked without changing anything; raises what the restore would."""
        return {}

    def drill(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """Restore somewhere scratch, check what came back, remove it; raises VerifyFailed on a mismatch."""
        raise NotImplementedError

    def remove_stage(self, ctx: Context, target: Target, where: str) -> bool:
        """Remove what a killed restore or drill left (a `where` it passed to ctx.stage); whether it was there."""
        return False


def clear_leftovers(ctx: Context, store: Store, listing: Listing, keep: str | None = None) -> None:
    """Remove what interrupted runs of this target left on a store (call it holding the target's lock).

    The lock says no bak runs this target, not that nothing writes: an orphaned child of a killed
    run could still be filling a partial. Then nothing is touched and the run is refused.
    """
    for leftover in listing.partials:
        if store.kind in ("local", "ssh"):
            path = store.path_of(leftover.folder, leftover.name)
            writers = ctx.hosts.runner(store.host_name).processes_using(path)
            if writers:
                pid, command = writers[0]
                raise Refused(f"{leftover.name} on {store.name} is still being written by pid {pid} ({command[:200]})",
                              where=f"{store.name}:{leftover.folder}/{leftover.name}", code="partial_in_use",
                              hint=f"Wait for that process to end, or stop it (kill {pid}), then run again.",
                              details={"pid": pid, "command": command})
        if leftover.name == keep:
            continue
        store.remove(leftover.folder, leftover.name)
        ctx.warnings.append(f"removed {leftover.folder}/{leftover.name} on {store.name}, left by an interrupted run")


def fresh_name(ctx: Context, target: Target, listings: list[Listing], daily: str, timed: str) -> str:
    """The seed's daily name for the day's first backup, else the name with its time of day.

    A name is never used twice: not while a backup of that day exists (a pruned daily snapshot
    must not come back as the "oldest" of its day), not if the journal shows it was made before.
    """
    same_day = any(b.when.date() == ctx.now.date() and not b.name.endswith(naming.PARTIAL_SUFFIX)
                   for listing in listings for b in listing.backups)
    used = ctx.journal.names_created(target.name)
    if not same_day and daily not in used:
        return daily
    if timed in used or any(b.name == timed for listing in listings for b in listing.backups):
        raise Refused(f"{timed} was already made once; a backup name is never reused", where=target.name,
                      code="name_taken", hint="Wait a second and run again; check the clock if this repeats.")
    return timed


def free_name(store: Store, folder: str, make: Callable[[datetime], str]) -> str:
    """A timed name not yet on the store (for safety copies: two forced restores within one second)."""
    taken = {entry.name.removesuffix(naming.PARTIAL_SUFFIX) for entry in store.list(folder)}
    when = datetime.now().replace(microsecond=0)
    while make(when) in taken:
        when += timedelta(seconds=1)
    return make(when)


def drill_verdict(result: dict, diff: dict[str, list[str]], store: Store, backup: Backup, restored: str) -> dict:
    """The drill's result when every check passed; else one VerifyFailed naming the copy and what differs."""
    result["passed"] = all(check["ok"] for check in result["checks"])
    if not result["passed"]:
        count = sum(len(paths) for paths in diff.values())
        raise VerifyFailed(f"drill of {backup.name} from {store.name}: {restored} ({count} entries)",
                           where=f"{store.name}:{backup.name}", code="drill_failed", details={"result": result})
    return result
