"""Health per target and destination: age vs interval, size trend, 3-2-1 copies, verify and drill, proven RPO
(the age of the newest backup that passed a restore drill), space.

Every host is asked in parallel over its one connection, each folder is listed and parsed once
for all the targets that write there, and the journal is read once per kind: a run costs about
the slowest host, not the sum.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from bak import catalog, forecast, media, naming
from bak.config import Config, Target, parse_duration
from bak.discover import coverage_summary
from bak.errors import BakError
from bak.journal import Journal
from bak.report import Outcome
from bak.run import Hosts
from bak.stores import open_store

DRILL_EVERY = timedelta(days=31)
CRITICAL_PERCENT = 90
FAILED = ("failed", "partial", "interrupted")


def _scan_host(config: Config, hosts: Hosts, dest_names: list[str], targets_by_dest: dict[str, list[Target]]) -> dict:
    """Everything one host can tell: usage and folder indexes of its destinations."""
    found = {}
    for name in dest_names:
        row: dict = {"store": None, "indexes": {}, "usage": None, "error": None, "exists": True,
                     "medium": media.medium_of(config, config.destinations[name])}  # remote: measured below
        try:
            store = row["store"] = open_store(config.destinations[name], hosts)
            row["usage"] = store.usage()
            row["exists"] = store.exists()
            folders = sorted({f for t in targets_by_dest[name] for f in catalog.folders_to_read(t, store)})
            for folder in folders:
                row["indexes"][folder] = catalog.index_folder(name, folder, store.list(folder))
            row["medium"] = media.medium_of(config, config.destinations[name], hosts)
        except BakError as exc:
            row["error"] = exc
        found[name] = row
    return found


def gather(config: Config, hosts: Hosts) -> dict[str, dict]:
    targets_by_dest: dict[str, list[Target]] = {}
    for target in config.targets:
        for dest in target.destinations:
            targets_by_dest.setdefault(dest, []).append(target)
    by_host: dict[str, list[str]] = {}
    for dest in targets_by_dest:
        by_host.setdefault(config.destinations[dest].host, []).append(dest)
    for host in by_host:
        hosts.runner(host)  # created here, used by one thread each
    with ThreadPoolExecutor(max_workers=max(1, len(by_host))) as pool:
        futures = [pool.submit(_scan_host, config, hosts, names, targets_by_dest) for names in by_host.values()]
        results: dict[str, dict] = {}
        for future in futures:
            results.update(future.result())
    return results


def first_line(text: str | None) -> str:
    """The first non-blank line of an error tail, or a note that none was recorded."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[0][:200] if lines else "(no error recorded)"


def _age_text(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f}d" if hours >= 48 else f"{hours:.1f}h"


def _when(text) -> datetime | None:
    """A journal time (UTC ISO as bak writes it); None for anything else a damaged journal may hold."""
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def target_health(config: Config, target: Target, scanned: dict, journal: dict, now: datetime) -> dict:
    unreadable = [d for d in target.destinations if scanned[d]["error"] is not None or scanned[d]["store"] is None]
    listings = [catalog.listing_from(target, scanned[dest]["store"], scanned[dest]["indexes"])
                for dest in target.destinations if dest not in unreadable]
    backups = sorted((b for l in listings for b in l.backups), key=lambda b: (b.when, b.name), reverse=True)
    problems: list[str] = []
    ahead = [b for b in backups if b.in_future(now)]
    for backup in ahead[:5]:
        problems.append(f"{backup.store}:{backup.name} is dated {_age_text(backup.when - now)} in the future "
                        "(clock skew?): it does not count as the newest backup")
    backups = [b for b in backups if not b.in_future(now)]
    newest = backups[0] if backups else None
    entry: dict = {"target": target.name, "method": target.method, "interval_h": target.interval.total_seconds() / 3600}

    last_create = journal["create"].get(target.name)
    utc_now = datetime.now(timezone.utc)
    if newest is None:
        state = "UNKNOWN" if unreadable else "MISSING"  # a backup may sit where bak could not look
    else:
        age = now - newest.when
        state = "OK" if age <= target.interval else ("LATE" if age <= 2 * target.interval else "STALE")
        entry["newest"] = {"name": newest.name, "when": newest.when.isoformat(), "age_h": round(age.total_seconds() / 3600, 2),
                           "size": newest.size, "added": newest.added}
        previous = next((b for b in backups if b.when < newest.when), None)
        if previous is not None and previous.size:
            entry["size_change_pct"] = round(100.0 * (newest.size - previous.size) / previous.size, 1)
    if last_create and last_create["status"] in FAILED:
        started = _when(last_create["started_at"])
        if newest is None or started is None or started.astimezone().replace(tzinfo=None) > newest.when:
            state = "FAILING"
            problems.append(f"last backup {last_create['status']}: {first_line(last_create['error_tail'])}")
    if state in ("LATE", "STALE"):
        problems.append(f"newest backup is {_age_text(now - newest.when)} old (interval {_age_text(target.interval)})")
    elif state == "UNKNOWN":
        problems.append(f"no backup found, and {', '.join(unreadable)} could not be read")
    elif state == "MISSING":
        problems.append("no backup on any destination")
    entry["state"] = state

    holders = [l.store for l in listings if newest and any(b.name == newest.name for b in l.backups)]
    rule = media.rule_321(config, target, holders, {d: scanned[d]["medium"] for d in holders})
    entry["copies"] = {"destinations": holders, "media": rule["media"], "copies": rule["copies"],
                       "media_count": rule["media_count"], "offsite": rule["offsite"],
                       "offsite_destinations": rule["offsite_destinations"], "ok": not rule["gaps"]}
    if newest and rule["gaps"]:
        problems.append("3-2-1 not met: missing " + ", ".join(rule["gaps"]))
        problems += [f"3-2-1: {claim}" for claim in rule["contradicted"]]

    verify = journal["verify"].get(target.name)
    entry["last_verify"] = {"at": verify["started_at"], "status": verify["status"]} if verify else None
    if verify and verify["status"] in FAILED:
        problems.append(f"last verify failed: {first_line(verify['error_tail'])}")
    drill = journal["drill"].get(target.name)
    entry["last_drill"] = ({"at": drill["started_at"], "status": drill["status"],
                            "restore_s": (drill["details"] or {}).get("restore_duration_s")} if drill else None)
    drills = latest_drill_of_each_backup(journal["drill_by_copy"].get(target.name, {}))
    passed = [when for when in (_when(r["started_at"]) for r in drills.values() if r["status"] == "ok") if when]
    entry["drill_overdue"] = not passed or utc_now - max(passed) > DRILL_EVERY
    proven = next((b for b in backups if drills.get(b.name, {}).get("status") == "ok"), None)
    bound = parse_duration(config.dr["proven_rpo_max"])
    entry["proven_rpo"] = None
    if proven is not None:
        age = now - proven.when
        entry["proven_rpo"] = {"backup": proven.name, "when": proven.when.isoformat(),
                               "age_h": round(age.total_seconds() / 3600, 2), "bound_h": bound.total_seconds() / 3600,
                               "ok": age <= bound, "booted": booted(drills[proven.name])}
        if age > bound:
            problems.append(f"proven RPO {_age_text(age)} exceeds {_age_text(bound)}: the newest backup that passed a "
                            f"restore drill is {proven.name}")
    elif newest is not None:
        problems.append("never test-restored: no backup on its destinations passed a restore drill")
    entry["partials"] = [{"store": l.store, "name": p.name} for l in listings for p in l.partials]
    if entry["partials"]:
        problems.append(f"{len(entry['partials'])} leftover .partial file(s) from interrupted runs")
    entry["problems"] = problems
    return entry


def booted(drill: dict | None) -> bool:
    """The drill also started the restored guest and it answered (a Proxmox boot drill)."""
    return bool((((drill or {}).get("details") or {}).get("boot") or {}).get("answered"))


def latest_drill_of_each_backup(by_copy: dict[tuple[str, str], dict]) -> dict[str, dict]:
    """The newest drill of each backup, whichever copy it read: a backup is proven while its last drill passed."""
    latest: dict[str, dict] = {}
    for (_, name), row in by_copy.items():
        if name not in latest or row["id"] > latest[name]["id"]:
            latest[name] = row
    return latest


def space_series(name: str, scanned: dict, pruned: list[dict], now: datetime) -> list[tuple[float, float]]:
    """A destination's used bytes over the forecast window: measured now, walked back through the backups
    still there (from the catalogue) and those pruned from it (from the journal)."""
    cutoff = now - timedelta(seconds=forecast.WINDOW_S)
    events = []
    for index in scanned["indexes"].values():
        for backup in (b for items in index.backups.values() for b in items):
            if cutoff <= backup.when and not backup.in_future(now):
                backup.reader = backup.reader or scanned["store"]
                events.append((backup.when.timestamp(), backup.added if backup.added is not None else backup.size))
    for row in pruned:
        details, pruned_at = row["details"], _when(row["started_at"])
        made = naming.parse(details.get("name") or "") if details.get("store") == name else None
        freed = details.get("added") if isinstance(details.get("added"), int) else row["bytes"]
        if made and pruned_at and isinstance(freed, int):
            events += [(made.when.timestamp(), freed), (pruned_at.timestamp(), -freed)]
    usage = scanned["usage"]
    return forecast.usage_series(usage.total - usage.free, now.timestamp(), events)


def destination_health(config: Config, name: str, scanned: dict, pruned: list[dict], now: datetime,
                       checks: list[dict] | None = None) -> dict:
    dest = config.destinations[name]
    row = {"destination": name, "kind": dest.kind, "host": dest.host, "medium": dest.medium, "offsite": dest.offsite,
           "on": scanned["medium"].label}
    if dest.kind == "restic":
        from bak.repository import coverage

        row["check"] = coverage([op for op in checks or [] if op["details"].get("destination") == name])
    if scanned["error"] is not None:
        return {**row, "level": "unreachable", "error": scanned["error"].message}
    usage = scanned["usage"]
    if usage is None:  # a remote restic repository: its backend does not report free space
        return {**row, "level": "ok"}
    percent = round(usage.used_percent, 1)
    level = "critical" if percent >= CRITICAL_PERCENT else ("warn" if percent >= dest.warn_percent else "ok")
    if not scanned["exists"]:
        level = "missing"  # the usage shown would be its parent's: say so instead
    outlook = forecast.forecast(space_series(name, scanned, pruned, now), usage.total,
                                {"warn": dest.warn_percent, "critical": CRITICAL_PERCENT, "full": 100})
    return {**row, "level": level, "total": usage.total, "free": usage.free, "used_percent": percent,
            "forecast": outlook}


def pruned_since(journal: Journal, since: datetime) -> list[dict]:
    """Backups bak pruned since a local time, as journal rows (UTC times there)."""
    start = since.astimezone(timezone.utc).isoformat(timespec="seconds")
    return journal.query(kind="prune", status="ok", since=start, limit=100000)


def status(config: Config, now: datetime | None = None) -> Outcome:
    now = now or datetime.now()
    journal = Journal.default()
    try:
        history = {"create": journal.latest("create"), "verify": journal.latest("verify"),
                   "drill": journal.latest("drill"), "drill_by_copy": journal.verdicts_by_copy("drill"),
                   "pruned": pruned_since(journal, now - timedelta(seconds=forecast.WINDOW_S))}
        coverage = coverage_summary(config, next(iter(journal.query(kind="discover", limit=1)), None))
        from bak.repository import HISTORY

        checks = journal.query(kind="check", limit=HISTORY)
    finally:
        journal.close()
    with Hosts(config) as hosts:  # open while sizes are read from snapshot manifests
        scanned = gather(config, hosts)
        targets = [target_health(config, t, scanned, history, now) for t in config.targets if t.enabled]
        destinations = [destination_health(config, name, scanned[name], history["pruned"], now, checks) for name in sorted(scanned)]
    outcome = Outcome({"summary": "", "targets": targets, "destinations": destinations, "coverage": coverage})
    if coverage and coverage["unprotected"]:
        outcome.problem("unprotected", f"{coverage['unprotected']} item(s) found by bak discover that no target backs up: "
                        + ", ".join(coverage["unprotected_items"][:5]), None, "See them all: bak discover")
    for entry in targets:
        for problem in entry["problems"]:
            outcome.problem(f"target_{entry['state'].lower()}" if entry["state"] != "OK" else "target_attention",
                            problem, entry["target"])
    for dest in destinations:
        if dest["level"] == "unreachable":
            outcome.problem("destination_unreachable", dest["error"], dest["destination"])
        elif dest["level"] == "missing":
            outcome.problem("destination_missing", f"{dest['destination']}: its folder does not exist", dest["destination"],
                            "Check the path and that its disk or share is mounted; the first backup creates it.")
        elif dest["level"] != "ok":
            outcome.problem(f"destination_{dest['level']}", f"{dest['destination']} is {dest['used_percent']}% full",
                            dest["destination"], "Prune (bak prune --dry-run) or add space.")
    attention = [t["target"] for t in targets if t["problems"]]
    tight = [d["destination"] for d in destinations if d["level"] != "ok"]
    unprotected = coverage["unprotected"] if coverage else 0
    if not attention and not tight and not unprotected:
        outcome.result["summary"] = f"HEALTHY: {len(targets)} target(s) OK, {len(destinations)} destination(s) OK"
    else:
        outcome.result["summary"] = (f"ATTENTION: {len(attention)} of {len(targets)} target(s) need attention"
                                     + (f" ({', '.join(attention)})" if attention else "")
                                     + (f"; destinations: {', '.join(tight)}" if tight else "")
                                     + (f"; {unprotected} unprotected item(s)" if unprotected else ""))
    return outcome
