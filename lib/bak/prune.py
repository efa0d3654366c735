"""Apply retention to every destination of a target: plan first, then execute exactly that plan."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timedelta

from bak import catalog
from bak.config import Config, Target
from bak.errors import BakError, Refused
from bak.journal import Journal
from bak.locks import target_lock
from bak.report import Outcome
from bak.retention import Candidate, keep_newest_good, plan
from bak.run import Hosts
from bak.stores import open_store


@dataclass
class StorePlan:
    store: object
    listing: catalog.Listing
    decisions: list
    stale_partials: list

    @cached_property
    def by_name(self) -> dict[str, catalog.Backup]:
        return {b.name: b for b in self.listing.backups}

    def snapshots(self, folder: str, name: str) -> list[str]:
        """A restic repository's snapshots that make a backup (or leftover): what `restic forget` gets."""
        return self.store.ids_of(folder, name) if self.store.kind == "restic" else []

    def as_dict(self) -> dict:
        by_name = self.by_name
        plan = {
            "store": self.listing.store,
            "folder": self.listing.folder,
            "decisions": [{"name": d.name, "when": d.when.isoformat(), "keep": d.keep, "reason": d.reason,
                           "size": by_name[d.name].size, "added": by_name[d.name].added,
                           "sidecars": sorted(by_name[d.name].sidecars),
                           **({} if d.keep or self.store.kind != "restic"
                              else {"snapshots": self.snapshots(by_name[d.name].folder, d.name)})}
                          for d in self.decisions],
            "stale_partials": [f"{p.folder}/{p.name}" for p in self.stale_partials],
            "foreign": self.listing.foreign,
            "kept": sum(d.keep for d in self.decisions),
            "removed": sum(not d.keep for d in self.decisions),
        }
        if self.store.kind == "restic":
            plan["restic_forget"] = self.forget_ids()
        return plan

    def forget_ids(self) -> list[str]:
        """Exactly what `restic forget` is given: the removed backups' snapshots and the stale leftovers', with
        each seal all of whose backups go (a seal some kept backup still needs stays)."""
        by_folder: dict[str, list[str]] = {}
        for decision in self.decisions:
            if not decision.keep:
                by_folder.setdefault(self.by_name[decision.name].folder, []).append(decision.name)
        for partial in self.stale_partials:
            by_folder.setdefault(partial.folder, []).append(partial.name)
        return sorted({i for folder, names in by_folder.items() for i in self.store.ids_of(folder, names)})


def newest_time(listings: list[catalog.Listing], now: datetime) -> datetime | None:
    times = [b.when for b in (l.newest_good(now) for l in listings) if b]
    return max(times) if times else None


def plan_target(config: Config, target: Target, hosts: Hosts, now: datetime) -> list[StorePlan]:
    plans = []
    for name in target.destinations:
        store = open_store(config.destinations[name], hosts)
        plans.append(plan_listing(config, target, store, catalog.scan(store, target), now))
    return plans


def plan_listing(config: Config, target: Target, store, listing: catalog.Listing, now: datetime) -> StorePlan:
    """What the target's policy does with its backups on one store (the report shows it without pruning)."""
    policy = config.policies.get(target.policy) if target.policy else None
    candidates = [Candidate(b.name, b.when, b.protected) for b in listing.backups]
    # vzdump writes no .sha256 on Proxmox storage: its archives there count as checked by vzdump.
    good = {b.name for b in listing.backups if b.has_checksum or store.kind == "proxmox"}
    decisions = keep_newest_good(plan(candidates, policy), lambda n: n in good)
    cutoff = now.timestamp() - target.interval.total_seconds()
    stale = [p for p in listing.partials if p.mtime < cutoff]
    return StorePlan(store, listing, decisions, stale)


def prune(config: Config, targets: list[Target], *, dry_run: bool, force: bool, now: datetime | None = None,
          safety_age: timedelta | None = None) -> Outcome:
    now = now or datetime.now()
    outcome = Outcome({"dry_run": dry_run, "targets": []})
    journal = None if dry_run else Journal.default()
    with Hosts(config) as hosts:
        for target in targets:
            entry = {"target": target.name, "policy": target.policy, "status": "planned" if dry_run else "pruned",
                     "stores": [], "removed": 0, "removed_bytes": 0, "kept": 0}
            outcome.result["targets"].append(entry)
            try:
                if dry_run:
                    _prune_target(config, target, hosts, now, entry, dry_run, force, None, safety_age)
                else:
                    with target_lock(target.name, "prune"):
                        _prune_target(config, target, hosts, now, entry, dry_run, force, journal, safety_age)
            except BakError as exc:
                entry["status"] = "refused" if isinstance(exc, Refused) else "failed"
                entry["error"] = exc.message
                outcome.failed(exc)
    if journal:
        journal.close()
    return outcome


def _prune_target(config, target, hosts, now, entry, dry_run, force, journal, safety_age) -> None:
    plans = plan_target(config, target, hosts, now)
    entry["stores"] = [p.as_dict() for p in plans]
    entry.update(reasons([d for p in plans for d in p.decisions]))
    if safety_age is not None:
        _prune_safety_copies(target, plans, entry, now - safety_age, dry_run, journal)
    ahead = [b for p in plans for b in p.listing.backups if b.in_future(now)]
    if ahead and not force:
        first = ahead[0]
        raise Refused(f"{first.store}:{first.folder}/{first.name} is dated {first.when:%Y-%m-%d %H:%M}, in the future: "
                      f"with a wrong clock, retention would keep it and remove real backups", where=target.name,
                      code="backup_in_future",
                      hint="Check the clocks of this machine and the hosts, and remove or rename that backup; "
                           "or pass --force to prune anyway.")
    newest = newest_time([p.listing for p in plans], now)
    if newest is not None and now - newest > 2 * target.interval and not force:
        age = now - newest
        raise Refused(f"target {target.name} is stale: its newest backup is {_age(age)} old (interval {_age(target.interval)}); "
                      "pruning now could remove the last good copies", where=target.name, code="stale_target",
                      hint="Fix the backup first (bak create --target " + target.name + "), or pass --force.")
    for store_plan in plans:
        if store_plan.store.kind == "restic":
            _prune_restic(store_plan, entry, dry_run, journal, target)
            continue
        for decision in store_plan.decisions:
            if decision.keep:
                entry["kept"] += 1
                continue
            backup = store_plan.by_name[decision.name]
            entry["removed"] += 1
            entry["removed_bytes"] += backup.added or 0  # a hard-linked snapshot frees about what it added
            if not dry_run:
                _remove(store_plan.store, backup, decision.reason, journal, target)
        if not dry_run:
            # We hold the target's lock, so no running backup owns these leftovers.
            for partial in store_plan.stale_partials:
                store_plan.store.remove(partial.folder, partial.name)


def _prune_safety_copies(target: Target, plans: list[StorePlan], entry: dict, cutoff: datetime, dry_run: bool,
                         journal: Journal | None) -> None:
    """The explicit rule for safety copies: older than the cutoff goes, whatever the policy says."""
    for store_plan, row in zip(plans, entry["stores"]):
        old = [c for c in catalog.safety_copies(store_plan.store, target) if c.when < cutoff]
        row["safety_copies"] = [{"name": f"{c.folder}/{c.name}", "when": c.when.isoformat(), "size": c.size,
                                 "reason": f"safety copy older than {cutoff:%Y-%m-%d %H:%M}"} for c in old]
        entry["removed"] += len(old)
        entry["removed_bytes"] += sum(c.size for c in old)
        if not dry_run:
            for copy in old:
                _remove(store_plan.store, copy, row["safety_copies"][0]["reason"], journal, target)


def _prune_restic(store_plan: StorePlan, entry: dict, dry_run: bool, journal: Journal | None, target: Target) -> None:
    """The same plan, executed the way restic deletes: one `restic forget` with every snapshot id the plan
    names, then `restic prune` (which frees the data). Each removal is journaled with its reason."""
    store = store_plan.store
    removed = [(d, store_plan.by_name[d.name]) for d in store_plan.decisions if not d.keep]
    entry["kept"] += len(store_plan.decisions) - len(removed)
    entry["removed"] += len(removed)
    entry["removed_bytes"] += sum(b.added or 0 for _, b in removed)
    ids = store_plan.forget_ids()
    if dry_run or not (ids or store.forgot):
        return
    started = [journal.start("prune", target.name, {"store": store.name, "name": b.name, "reason": d.reason,
                                                    "sidecars": sorted(b.sidecars),
                                                    "snapshots": store_plan.snapshots(b.folder, b.name)})
               for d, b in removed]
    try:
        store.forget(ids)
        store.prune()
    except BaseException as exc:
        for op_id in started:
            journal.finish(op_id, "failed", error_tail=getattr(exc, "message", None) or str(exc))
        raise
    for op_id, (_, backup) in zip(started, removed):
        journal.finish(op_id, "ok", bytes_=backup.size)


def _remove(store, backup: catalog.Backup, reason: str, journal: Journal, target: Target) -> None:
    details = {"store": store.name, "name": backup.name, "reason": reason, "sidecars": sorted(backup.sidecars),
               "added": backup.added}  # what removing it frees (a hard-linked snapshot: about what it added)
    with journal.operation("prune", target.name, details) as op:
        op.bytes = backup.size
        store.remove_backup(backup.folder, backup.name, backup.sidecars)


def reasons(decisions: list) -> dict:
    """Why, counted: the rule that kept each backup, and why the others go (what the agent says without
    reading every decision)."""
    kept_by: dict[str, int] = {}
    removed_because: dict[str, int] = {}
    for decision in decisions:
        if decision.keep:
            rule = decision.reason if decision.reason in ("protected", "keep-all") or "(" in decision.reason \
                else decision.reason.split()[0]
            kept_by[rule] = kept_by.get(rule, 0) + 1
        else:
            head, sep, _ = decision.reason.partition(" is kept by ")
            why = f"{head.split()[0]}: another backup of that period is kept" if sep else decision.reason
            removed_because[why] = removed_because.get(why, 0) + 1
    return {"kept_by": kept_by, "removed_because": removed_because}


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f}d" if hours >= 48 else f"{hours:.1f}h"


def generated_times(every: timedelta, days: int, end: datetime) -> list[datetime]:
    """A backup every `every` for `days` days up to `end`, as a scheduler would make them."""
    start = end - timedelta(days=days)
    times, current = [], end
    while current > start:
        times.append(current)
        current -= every
    return times


def parse_times(lines: list[str]) -> list[tuple[str, datetime]]:
    """Timestamps (ISO) or backup file names, one per line."""
    from bak import naming
    from bak.errors import BadInput

    parsed = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        by_name = naming.parse(text)
        if by_name:
            parsed.append((text, by_name.when))
            continue
        try:
            parsed.append((text, datetime.fromisoformat(text).replace(tzinfo=None)))
        except ValueError:
            raise BadInput(f"line {number}: {text[:80]!r} is neither an ISO time nor a backup file name",
                           where=f"stdin:{number}") from None
    return parsed


def simulate(policy: dict, entries: list[tuple[str, datetime]]) -> Outcome:
    decisions = plan([Candidate(name, when) for name, when in entries], policy)
    kept = [d for d in decisions if d.keep]
    return Outcome({"policy": policy, "total": len(decisions), "kept": len(kept), "removed": len(decisions) - len(kept),
                    "decisions": [{"name": d.name, "when": d.when.isoformat(), "keep": d.keep, "reason": d.reason}
                                  for d in decisions]})
