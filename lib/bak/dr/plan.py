"""`bak dr plan`: the ordered recovery of the whole homelab, from the config, the catalogue and the journal.

For each target, in recovery order (dr.order): the newest backup with a copy whose last check
(verify or drill) passed, skipping a backup whose last drill failed; where its copies are (on-site or
off-site, from the facts of 3-2-1); bak's command and the commands to run by hand; and the expected
restore time, from the newest passed drill of that target scaled to the backup's size. The total is
the expected RTO, said to be incomplete when a step was never drilled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bak import catalog, media
from bak.catalog import Backup
from bak.config import Config, Target
from bak.dr import manual
from bak.dr.kit import recorded_fingerprint, secret_references
from bak.dr.order import Dependency, recovery_order
from bak.errors import BadInput, BakError
from bak.report import Outcome, human_size
from bak.status import booted, gather, latest_drill_of_each_backup
from bak.stores import Store

KIT_KINDS = ("local", "ssh", "restic")  # destinations bak writes files to: they also hold the recovery kit


@dataclass
class Step:
    target: Target
    dependencies: list[Dependency]
    chosen: tuple[Store, Backup] | None = None
    row: dict = field(default_factory=dict)


def last_check(verified: dict, drilled: dict, key: tuple[str, str]) -> dict | None:
    """The newest verify or drill of one copy: what is known of it now."""
    rows = [row for row in (verified.get(key), drilled.get(key)) if row]
    return max(rows, key=lambda row: row["id"]) if rows else None


def choose(target: Target, listings: list[catalog.Listing], verified: dict, drilled: dict,
           now: datetime) -> tuple[list[tuple[Store, Backup]], bool]:
    """(the copies of the backup to restore, the restorable one first; whether a check vouches for it):
    the newest backup with a copy whose last check passed, else the newest no check found bad."""
    order = {dest: i for i, dest in enumerate(target.destinations)}
    copies: dict[str, list[tuple[Store, Backup]]] = {}
    for listing in sorted(listings, key=lambda l: order.get(l.store, len(order))):
        for backup in listing.backups:
            if not backup.in_future(now):
                copies.setdefault(backup.name, []).append((backup.reader, backup))
    names = sorted(copies, key=lambda n: (copies[n][0][1].when, n), reverse=True)
    last_drill = latest_drill_of_each_backup(drilled)
    names = [n for n in names if last_drill.get(n, {}).get("status") != "failed"]  # its last drill failed: ruled out

    def state(pair):
        check = last_check(verified, drilled, (pair[0].name, pair[1].name))
        return None if check is None else check["status"] == "ok"

    for name in names:
        good = [pair for pair in copies[name] if state(pair)]
        if good:
            return good + [pair for pair in copies[name] if pair not in good], True
    for name in names:
        unchecked = [pair for pair in copies[name] if state(pair) is None]
        if unchecked:
            return unchecked, False
    return [], False


def estimate(drilled: dict, size: int | None) -> dict | None:
    """The newest passed drill's restore time, scaled to `size` by that drill's bytes."""
    passed = [row for row in drilled.values() if row["status"] == "ok"
              and isinstance((row["details"] or {}).get("restore_duration_s"), (int, float))]
    if not passed:
        return None
    row = max(passed, key=lambda r: r["id"])
    seconds = float(row["details"]["restore_duration_s"])
    basis = f"drill of {row['details']['name']} ({row['started_at'][:10]}): {seconds:.1f}s"
    if size and row["bytes"] and size != row["bytes"]:
        basis += f" for {human_size(row['bytes'])}, scaled to {human_size(size)}"
        seconds *= size / row["bytes"]
    return {"seconds": round(seconds, 3), "basis": basis}


def build(session, targets: list[Target] | None = None) -> tuple[dict, list[Step]]:
    """(the plan, as JSON; its steps, with the chosen store and backup for `bak dr drill`)."""
    config: Config = session.config
    now = datetime.now().replace(microsecond=0)
    targets = targets if targets is not None else [t for t in config.targets if t.enabled]
    ordered, found, left_out = recovery_order(config, targets)
    verified = session.journal.verdicts_by_copy("verify")
    drilled = session.journal.verdicts_by_copy("drill")
    scanned = gather(config, session.hosts)
    steps = []
    for number, target in enumerate(ordered, 1):
        step = Step(target, found[target.name])
        step.row = _step_row(config, step, number, scanned, verified.get(target.name, {}),
                             drilled.get(target.name, {}), now)
        steps.append(step)
    rows = [s.row for s in steps]
    timed = [r["estimate"]["seconds"] for r in rows if r["estimate"]]
    plan = {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": config.source,
            "steps": rows, "rto_s": round(sum(timed), 3),
            "unestimated": [r["target"] for r in rows if not r["estimate"]], "left_out": left_out,
            "kit": kit_places(config, targets), "secrets": secret_references(config)}
    return plan, steps


def _step_row(config: Config, step: Step, number: int, scanned: dict, verified: dict, drilled: dict,
              now: datetime) -> dict:
    target = step.target
    listings = [catalog.listing_from(target, scanned[d]["store"], scanned[d]["indexes"])
                for d in target.destinations if scanned[d]["store"] is not None]
    unreachable = [d for d in target.destinations if scanned[d]["store"] is None]
    pairs, vouched = choose(target, listings, verified, drilled, now)
    row = {"step": number, "target": target.name, "method": target.method, "host": target.host,
           "description": target.description, "restores": manual.original(target),
           "after": [{"target": d.on, "reason": d.reason} for d in step.dependencies],
           "backup": None, "source": None, "copies": [], "estimate": None,
           "commands": {"bak": [], "manual": []}, "problems": [f"{d} unreachable: {scanned[d]['error'].message}"
                                                              for d in unreachable]}
    if not pairs:
        row["problems"].append("no backup to restore: none on its destinations, or every one failed its last check")
        return row
    store, backup = pairs[0]
    step.chosen = (store, backup)
    holders = [s.name for s, _ in pairs]
    offsite = set(media.rule_321(config, target, holders, {d: scanned[d]["medium"] for d in holders})["offsite_destinations"])
    last_drill = latest_drill_of_each_backup(drilled).get(backup.name)
    row["backup"] = {"name": backup.name, "when": backup.when.isoformat(),
                     "age_h": round((now - backup.when).total_seconds() / 3600, 2), "size": backup.size,
                     "checked": vouched, "drilled": bool(last_drill), "drilled_at": last_drill and last_drill["started_at"],
                     "booted": booted(last_drill)}
    for copy_store, copy in pairs:
        check = last_check(verified, drilled, (copy_store.name, copy.name))
        row["copies"].append({"destination": copy_store.name, "kind": copy_store.kind,
                              "location": copy_store.location(copy.folder, copy.name),
                              "offsite": copy_store.name in offsite,
                              "check": check and {"kind": check["kind"], "status": check["status"], "at": check["started_at"]}})
    row["source"] = row["copies"][0]
    if not vouched:
        row["problems"].append(f"{backup.name} was never verified nor drilled: run bak verify --target {target.name}")
    elif not last_drill:
        row["problems"].append(f"{backup.name} was verified but never test-restored: run bak drill --target {target.name}")
    row["estimate"] = estimate(drilled, backup.size)
    if row["estimate"] is None:
        row["problems"].append("no passed drill to time the restore: run bak drill --target " + target.name)
    row["commands"] = commands(config, target, store, backup)
    if not row["source"]["offsite"]:  # the place that holds it may be lost with the rest: say how from off-site
        away = next(((s, b) for s, b in pairs if s.name in offsite), None)
        if away:
            row["offsite_commands"] = {"destination": away[0].name, **commands(config, target, *away)}
    return row


def commands(config: Config, target: Target, store: Store, backup: Backup) -> dict:
    located = store.find(backup.folder, backup.name) if store.kind == "restic" else None
    return {"bak": [manual.bak_restore(target, store.name, backup.name)],
            "manual": manual.restore_lines(config, target, config.destinations[store.name], backup.folder, backup.name,
                                           _recorded_sha256(store, backup), backup.sidecars, located)}


def _recorded_sha256(store: Store, backup: Backup) -> str | None:
    """The sha256 its sidecar records, for the by-hand check (a Proxmox storage keeps none)."""
    from bak.verify import recorded_sha256

    try:
        return recorded_sha256(store, backup)
    except (OSError, BakError):
        return None


def kit_places(config: Config, targets: list[Target]) -> list[dict]:
    """Destinations that hold the recovery kit, and how a fresh machine bootstraps from each."""

    names = sorted({d for t in targets for d in t.destinations if config.destinations[d].kind in KIT_KINDS})
    places = []
    for name in names:
        dest = config.destinations[name]
        fingerprint = recorded_fingerprint(config.host(dest.host)) if dest.kind == "ssh" else None
        places.append({"destination": name, "kind": dest.kind, "host": dest.host,
                       "location": dest.path or dest.repository,
                       "bootstrap": manual.bootstrap_lines(config, dest, fingerprint)})
    return places


def recovery_plan(config: Config, runbook: Path | None = None, force: bool = False) -> Outcome:
    """The plan as a command's outcome: each gap is a problem (exit 1); `runbook` (.md or .html) also
    writes it as a runbook there: a new file, or with `force` over a regular file."""
    from bak.actions import Session
    from bak.dr.runbook import markdown, page
    from bak.paths import output_file, write_output

    if runbook is not None:
        if runbook.suffix not in (".md", ".html"):
            raise BadInput(f"--runbook {runbook.name!r} must end in .md (Markdown) or .html (one self-contained page)",
                           where="--runbook")
        runbook = Path(os.path.abspath(runbook.expanduser()))
        output_file(runbook, "--runbook", force=force)
    with Session(config) as session:
        plan, _ = build(session)
    outcome = Outcome(plan)
    outcome.warnings += [f"recovery order: {note}" for note in plan["left_out"]]
    for step in plan["steps"]:
        for problem in step["problems"]:
            outcome.problem("plan_gap", f"{step['target']}: {problem}", step["target"])
    if runbook is not None:
        text = markdown(plan) if runbook.suffix == ".md" else page(plan)
        write_output(runbook, text.encode(), "--runbook", mode=0o600)
        plan["runbook"] = str(runbook)
    return outcome
