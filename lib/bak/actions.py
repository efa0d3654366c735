"""The per-target loops behind create, verify, restore, drill and list: lock, journal, report."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

from bak import catalog, naming, notify, watch
from bak.catalog import Backup
from bak.config import Config, Target
from bak.dr import kit
from bak.errors import BadInput, BakError, VerifyFailed
from bak.journal import Journal
from bak.locks import target_lock
from bak.methods import Context, method_for
from bak.report import Outcome
from bak.run import Hosts
from bak.stores import Store, open_store, stores_for


class Session:
    """Hosts, journal and context for one command; closes them all at the end."""

    def __init__(self, config: Config, progress=None):
        self.config = config
        self.hosts = Hosts(config)
        self.journal = Journal.default()
        self.ctx = Context(config, self.hosts, self.journal, datetime.now().replace(microsecond=0),
                           progress=progress or (lambda message: None))

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.hosts.close()
        self.journal.close()


def create(config: Config, targets: list[Target], *, dry_run: bool = False, progress=None,
           ping_url: str | None = None) -> Outcome:
    try:
        outcome = _create(config, targets, dry_run=dry_run, progress=progress, ping_url=ping_url)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: a scheduled run that ends so has failed, and says so
        if not dry_run:
            report_interrupted(config, targets, ping_url, stop)
        raise
    if not dry_run:
        kit.refresh(config, outcome)
        report_run(config, outcome, ping_url)
        watch.after_create(config, outcome)
    return outcome


def report_run(config: Config, outcome: Outcome, ping_url: str | None) -> None:
    """The end of a (scheduled) run: the success or fail ping, and the notifiers for configured events."""
    import socket

    from bak import notify

    failed = bool(outcome.errors)
    tail = "\n".join(f"{e['where']}: {e['message']}" for e in outcome.errors)
    if ping_url:
        problem = notify.ping(ping_url, "fail" if failed else "success", tail)
        outcome.warnings.extend([f"notification failed: {problem}"] if problem else [])
    targets = [t["target"] for t in outcome.result["targets"]]
    failing = [t["target"] for t in outcome.result["targets"] if t.get("status") != "ok"]
    details = {"targets": outcome.result["targets"], "errors": outcome.errors}
    if failed:
        title = f"bak: backup of {', '.join(failing or targets)} failed on {socket.gethostname()}"
        outcome.warnings.extend(notify.send(config, "failure", title, tail, details))
    else:
        summary = f"backed up {', '.join(targets)}"
        outcome.warnings.extend(notify.send(config, "success", f"bak: {summary} on {socket.gethostname()}", summary,
                                            details))


def report_interrupted(config: Config, targets: list[Target], ping_url, stop: KeyboardInterrupt) -> None:
    """The fail ping and the failure notification of a create stopped by a signal (a second signal waits)."""
    import socket

    from bak.interrupts import interrupts_deferred

    with interrupts_deferred():
        tail = f"bak create was interrupted ({stop or 'Ctrl-C'}): its backups were not finished"
        if ping_url:
            notify.ping(ping_url, "fail", tail)
        names = [t.name for t in targets]
        notify.send(config, "failure", f"bak: backup of {', '.join(names)} interrupted on {socket.gethostname()}", tail,
                    {"targets": names, "errors": [{"code": "interrupted", "message": tail}]})


def _create(config: Config, targets: list[Target], *, dry_run: bool, progress, ping_url: str | None) -> Outcome:
    outcome = Outcome({"dry_run": dry_run, "targets": []})
    if ping_url and not dry_run:
        from bak import notify

        problem = notify.ping(ping_url, "start")
        if problem:
            outcome.warnings.append(f"notification failed: {problem}")
    with Session(config, progress) as session:
        for target in targets:
            entry = {"target": target.name, "method": target.method, "destinations": list(target.destinations)}
            outcome.result["targets"].append(entry)
            try:
                method = method_for(target.method)
                if dry_run:
                    problems = preflight(session, target, method)
                    entry["status"] = "would_fail" if problems else "planned"
                    if problems:
                        entry["error"] = problems[0].message
                    for problem in problems:
                        outcome.failed(problem)
                    continue
                with target_lock(target.name, "create"):
                    session.ctx.now = datetime.now().replace(microsecond=0)  # each backup is named at its own start
                    stores, lost = _usable(stores_for(config, target.destinations, session.hosts), target)
                    with session.journal.operation("create", target.name, {"method": target.method}) as op:
                        if stores:
                            entry.update(method.create(session.ctx, target, stores, op))
                        entry["copies"] = [*entry.get("copies", []), *lost]
                        op.details.update({"name": entry.get("name"), "copies": entry.get("copies")})
                        copies = entry.get("copies", [])
                        failed = [c for c in copies if not c["ok"]]
                        if failed:
                            op.status = "failed" if len(failed) == len(copies) else "partial"
                            op.error_tail = "\n".join(f"{c['store']}: {c['error']['message']}" for c in failed if c["error"])
                findings = entry.pop("problems", [])
                entry["status"] = op.status if failed else ("partial" if findings else "ok")
                for finding in findings:
                    outcome.problem(**finding)
                for copy in failed:
                    outcome.problem(copy["error"]["code"], f"{target.name}: copy to {copy['store']} failed: "
                                    f"{copy['error']['message']}", copy["store"], copy["error"].get("hint"))
            except BakError as exc:
                entry.update(status="failed", error=exc.message)
                outcome.failed(exc)
        outcome.warnings.extend(session.ctx.warnings)
    return outcome


def preflight(session: Session, target: Target, method) -> list[BakError]:
    """What a create's dry run can find without writing anything: the hosts answer (a key file is there), the
    secrets can be read, the source is there, every destination can take a backup. Each problem, not the first."""
    from bak.config import LOCAL
    from bak.secrets import read_secret

    problems: list[BakError] = []

    def check(step) -> bool:
        try:
            step()
            return True
        except BakError as exc:
            if exc.to_error() not in [p.to_error() for p in problems]:
                problems.append(exc)
            return False

    config = session.config
    host_ok = target.host == LOCAL or check(lambda: session.hosts.runner(target.host).run(["true"]))
    for where, ref in secret_refs(target.options, f"targets.{target.name}.{target.method}"):
        if "pgpass" not in ref or target.host == LOCAL:  # a remote passfile is on its host, read there
            check(lambda: read_secret(ref, where))
    if host_ok:
        check(lambda: method.preflight(session.ctx, target))
    for name in target.destinations:
        destination = config.destinations[name]
        for key in ("password", "aws_access_key_id", "aws_secret_access_key"):
            if getattr(destination, key):
                check(lambda: read_secret(getattr(destination, key), f"destinations.{name}.{key}"))
        if destination.host != LOCAL and not check(lambda: session.hosts.runner(destination.host).run(["true"])):
            continue
        store = None

        def usable():
            nonlocal store
            store = open_store(destination, session.hosts)
            store.check_usable()

        if check(usable) and store.kind == "restic":
            _, lost = _usable([store], target)
            problems += [BakError(c["error"]["message"], where=c["store"], code=c["error"]["code"],
                                  hint=c["error"]["hint"]) for c in lost]
    return problems


def secret_refs(node, where: str):
    """(key path, reference) of every `{env|file|pgpass: ...}` secret reference in a target's options."""
    if isinstance(node, dict):
        if len(node) == 1 and next(iter(node)) in ("env", "file", "pgpass") and isinstance(next(iter(node.values())), str):
            yield where, node
            return
        for key, value in node.items():
            yield from secret_refs(value, f"{where}.{key}")


def _usable(stores: list, target: Target) -> tuple[list, list[dict]]:
    """A restic repository that cannot be listed (its server down, not created yet, a wrong password) costs
    its own copy, not the others: it is left out and reported as a failed copy."""
    usable, lost = [], []
    for store in stores:
        try:
            if store.kind == "restic":
                catalog.scan(store, target)  # kept by the store: the method's own listing costs nothing more
            usable.append(store)
        except BakError as exc:
            lost.append({"store": store.name, "location": store.location(catalog.folder_of(target)), "ok": False,
                         "error": exc.to_error()})
    return usable, lost


def backups_of(session: Session, target: Target, store_name: str | None = None,
               incomplete: list | None = None) -> list[tuple[object, Backup]]:
    """(store, backup) pairs, newest first; `store_name` limits it to one destination. `incomplete` gets the
    (store, file) pairs named like backups that lack their checksum sidecar (never backups: verify names them)."""
    names = [store_name] if store_name else list(target.destinations)
    if store_name and store_name not in target.destinations:
        raise BadInput(f"{store_name!r} is not a destination of {target.name}", where="--from",
                       hint="Destinations: " + ", ".join(target.destinations))
    found = []
    for name in names:
        store = open_store(session.config.destinations[name], session.hosts)
        listing = catalog.scan(store, target)
        found.extend((store, b) for b in listing.backups)
        if incomplete is not None:
            incomplete.extend((store, b) for b in listing.incomplete)
    return sorted(found, key=lambda pair: (pair[1].when, pair[1].name), reverse=True)


def verify(config: Config, targets: list[Target], *, every: bool = False, names: tuple[str, ...] = (),
           progress=None) -> Outcome:
    """Files are checked in parallel (hashlib and the format checkers release the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    outcome = Outcome({"checked": []})
    jobs = []
    with Session(config, progress) as session:
        for target in targets:
            lacking: list = []
            try:
                method = method_for(target.method)
                pairs = backups_of(session, target, incomplete=lacking)
            except BakError as exc:
                outcome.failed(exc)
                continue
            for store, backup in lacking:
                if names and backup.name not in names:
                    continue
                sidecar = naming.MANIFEST_SUFFIX if backup.is_dir else ".sha256"
                exc = VerifyFailed(f"{backup.name} on {store.name}: no {sidecar} sidecar, so it is not a complete backup "
                                   "(never restored or pruned; put the sidecar back, or remove it)",
                                   where=f"{store.name}:{backup.name}")
                outcome.result["checked"].append({"target": target.name, "store": store.name, "name": backup.name,
                                                  "ok": False, "checksum": "missing", "error": exc.message})
                outcome.failed(exc)
            if names:
                pairs = [p for p in pairs if p[1].name in names]
            elif not every:
                newest: dict[str, tuple] = {}
                for store, backup in pairs:
                    newest.setdefault(store.name, (store, backup))
                pairs = list(newest.values())
            if not pairs:
                outcome.problem("no_backup", f"{target.name} has no backup to verify", target.name,
                                f"Create one: bak create --target {target.name}")
            jobs.extend((target, method, store, backup) for store, backup in pairs)

        def check(job):
            target, method, store, backup = job
            row = {"target": target.name, "store": store.name, "name": backup.name}
            try:
                with session.journal.operation("verify", target.name, {"store": store.name, "name": backup.name}) as op:
                    row.update(method.verify(session.ctx, target, store, backup))
                    op.bytes, op.checksum = row["size"], row["sha256"]
                row["ok"] = True
                session.ctx.progress(f"verified {store.name}:{backup.name}")
                return row, None
            except BakError as exc:
                row.update(exc.details.get("result", {}), ok=False, error=exc.message)
                session.ctx.progress(f"FAILED {store.name}:{backup.name}: {exc.message}")
                return row, exc

        # One worker per core; remote stores share their host's connection (paramiko is thread-safe per channel).
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 2))) as pool:
            for row, exc in pool.map(check, jobs):
                outcome.result["checked"].append(row)
                if exc:
                    outcome.failed(exc)
        outcome.result["targets"] = verified_by_target(targets, outcome.result["checked"])
        if not names:  # restic repositories as a whole: their structure, and the next part of their data
            from bak.repository import check_repositories

            rows = check_repositories(config, targets, session.hosts, session.journal, outcome, session.ctx.progress)
            if rows:
                outcome.result["repositories"] = rows
    notify.report_failures(config, "verify_failed", "verify",
                           sorted({r["target"] for r in outcome.result["checked"] if not r["ok"]}), outcome)
    return outcome


def verified_by_target(targets: list[Target], checked: list[dict]) -> list[dict]:
    """Per target: how many backups were checked, passed and failed, and the bytes read."""
    summary = []
    for target in targets:
        rows = [r for r in checked if r["target"] == target.name]
        failed = [r for r in rows if not r["ok"]]
        summary.append({"target": target.name, "checked": len(rows), "ok": len(rows) - len(failed),
                        "failed": len(failed), "bytes": sum(r.get("size") or 0 for r in rows),
                        "failed_backups": sorted({f"{r['store']}:{r['name']}" for r in failed})[:5]})
    return summary


def copies_of(session: Session, target: Target, name: str | None, store_name: str | None) -> list[tuple[object, Backup]]:
    """The copies of the backup to restore (the newest, or `name`), in the order of the target's destinations."""
    pairs = backups_of(session, target, store_name)
    ahead = [p for p in pairs if p[1].in_future(session.ctx.now)]
    pairs = [p for p in pairs if p[1].name == name] if name else [p for p in pairs if p not in ahead]
    if not pairs:
        what = f"backup {name!r}" if name else "backup"
        raise BadInput(f"{target.name} has no {what}" + (f" on {store_name}" if store_name else ""),
                       where=target.name, code="no_backup", hint="List them with: bak list --target " + target.name)
    chosen = pairs[0][1].name
    order = {dest: i for i, dest in enumerate(target.destinations)}
    return sorted((p for p in pairs if p[1].name == chosen), key=lambda p: order.get(p[0].name, len(order)))


def restore(config: Config, target: Target, *, name: str | None, store_name: str | None, into: str | None,
            force: bool, dry_run: bool, options: dict) -> Outcome:
    """From the first copy that proves intact while it is read; a damaged copy is skipped (and said),
    unless --from chose it. The dry run checks rights and what would be replaced, and refuses as the run would."""
    for where, value in (("--into", into), ("--file", options.get("file"))):
        if value is not None and any(ord(c) < 32 or c == "\x7f" for c in value):
            raise BadInput(f"{where} {value[:80]!r} holds a control character (a newline?)", where=where,
                           hint="Name the place to restore into without control characters.")
    method = method_for(target.method)
    if options.get("file") is not None and not method.single_files:
        raise BadInput(f"--file restores one path of a file-tree snapshot; {target.name} is a {target.method} target",
                       where="--file", hint="Omit --file: this target's backups are restored whole.")
    with Session(config) as session:
        candidates = copies_of(session, target, name, store_name)
        store, backup = candidates[0]
        plan = {"target": target.name, "backup": backup.name, "store": store.name, "into": into, "force": force}
        checks = method.check_restore(session.ctx, target, store, backup, into=into, force=force, options=options)
        if dry_run:
            return Outcome({"dry_run": True, **plan, **({"checks": checks} if checks else {})})
        skipped = []
        with target_lock(target.name, "restore"):
            clear_stages(session, target, method)
            for store, backup in candidates:
                plan.update(store=store.name)
                try:
                    with session.journal.operation("restore", target.name, dict(plan)) as op, staging(session, op):
                        result = method.restore(session.ctx, target, store, backup, into=into, force=force, options=options)
                        op.bytes = backup.size
                        op.details.update(result)
                    break
                except VerifyFailed as exc:
                    if store_name or (store, backup) == candidates[-1]:
                        raise
                    skipped.append({"store": store.name, "reason": exc.message})
                    session.ctx.warnings.append(f"skipped the copy on {store.name}: {exc.message}")
        outcome = Outcome({"dry_run": False, **result, **({"skipped": skipped} if skipped else {})})
        outcome.warnings.extend(session.ctx.warnings)
        return outcome


def drill(config: Config, targets: list[Target], store_name: str | None = None, boot: bool = False) -> Outcome:
    """`store_name` drills the newest backup on that destination (a copy, in a disaster exercise); `boot` also
    boots each restored guest (the targets' boot_drill for this run)."""
    if boot:
        if not any(method_for(t.method).boots for t in targets):
            raise BadInput("--boot starts a restored guest: none of these targets is a Proxmox VM or container",
                           where="--boot", hint="Name vzdump targets with --target.")
        targets = [replace(t, options={**t.options, "boot_drill": True}) if method_for(t.method).boots else t
                   for t in targets]
    outcome = Outcome({"drills": []})
    with Session(config) as session:
        for target in targets:
            store = backup = None
            try:
                store, backup = copies_of(session, target, None, store_name)[0]
                result = drill_backup(session, target, store, backup)
                outcome.result["drills"].append(result)
            except BakError as exc:
                outcome.result["drills"].append(failed_drill(target, store, backup, exc))
                outcome.failed(exc)
        outcome.warnings.extend(session.ctx.warnings)
    notify.report_failures(config, "drill_failed", "restore drill",
                           [d["target"] for d in outcome.result["drills"] if not d.get("passed")], outcome)
    return outcome


def drill_backup(session: Session, target: Target, store: Store, backup: Backup) -> dict:
    """One drill of one copy, under the target's lock, journaled with the copy it read."""
    method = method_for(target.method)
    with target_lock(target.name, "drill"):
        clear_stages(session, target, method)
        with session.journal.operation("drill", target.name, {"store": store.name, "name": backup.name}) as op, \
                staging(session, op):
            try:
                result = method.drill(session.ctx, target, store, backup)
            except BakError as exc:  # what the drill measured before failing (boot time, the check) is journaled too
                op.details.update(exc.details.get("result") or {})
                raise
            op.details.update(result)
            op.bytes = backup.size
    return result


STAGING_KINDS = ("restore", "drill")


@contextmanager
def staging(session: Session, op):
    """While a restore or drill runs, what it builds is journaled in its operation (Context.stage)."""
    session.ctx.operation = op
    try:
        yield
    finally:
        session.ctx.operation = None


def left_stages(journal: Journal, target: str) -> list[dict]:
    """Restores and drills of a target that were killed while they built something, newest first."""
    rows = [row for kind in STAGING_KINDS for row in journal.query(target=target, kind=kind, limit=200)]
    return sorted((row for row in rows if row["status"] == "interrupted" and row["details"].get("stages")),
                  key=lambda row: row["id"], reverse=True)


def clear_stages(session: Session, target: Target, method) -> None:
    """What killed restores and drills of this target left (a half restored folder, a scratch database or
    volume), removed under the target's lock: no run of it is alive to own them."""
    journal = session.journal
    for row in left_stages(journal, target.name):
        details = dict(row["details"])
        for where in list(details["stages"]):
            try:
                removed = method.remove_stage(session.ctx, target, where)
            except BakError as exc:
                session.ctx.warnings.append(f"could not remove {where}, left by an interrupted {row['kind']}: {exc.message}")
                continue
            details["stages"] = [w for w in details["stages"] if w != where]
            details["cleared"] = [*details.get("cleared", []), where]
            journal.note(row["id"], details)
            if removed:
                session.ctx.warnings.append(f"removed {where}, left by a {row['kind']} of {target.name} interrupted "
                                            f"at {row['started_at']}")


def failed_drill(target: Target, store: Store | None, backup: Backup | None, exc: BakError) -> dict:
    return {"target": target.name, "backup": backup and backup.name, "store": store and store.name,
            "passed": False, **(exc.details.get("result") or {}), "error": exc.message}


def listing(config: Config, targets: list[Target], filters: dict | None = None) -> Outcome:
    """Backups by target and destination; `filters`: method, host, vmid, since, until, destination."""
    filters = filters or {}
    if filters.get("destination") and filters["destination"] not in config.destinations:
        raise BadInput(f"no destination named {filters['destination']!r}", where="--destination",
                       hint="Destinations: " + (", ".join(sorted(config.destinations)) or "none"))
    chosen = [t for t in targets
              if (not filters.get("method") or t.method == filters["method"])
              and (not filters.get("host") or t.host == filters["host"])
              and (not filters.get("vmid") or t.method == "vzdump" and t.options["vmid"] == filters["vmid"])]
    outcome = Outcome({"targets": [], "backups": [], "partials": [], "foreign": [], "safety_copies": [],
                       "restore_leftovers": []})
    with Session(config) as session:
        seen_foreign = set()
        for target in chosen:
            outcome.result["restore_leftovers"] += [
                {"target": target.name, "kind": row["kind"], "where": where, "interrupted_at": row["started_at"]}
                for row in left_stages(session.journal, target.name) for where in row["details"]["stages"]]
            for dest in target.destinations:
                if filters.get("destination") and dest != filters["destination"]:
                    continue
                try:
                    store = open_store(config.destinations[dest], session.hosts)
                    found = catalog.scan(store, target)
                    saved = catalog.safety_copies(store, target)
                except BakError as exc:
                    outcome.failed(exc)
                    continue
                for b in found.backups:
                    if filters.get("since") and b.when < filters["since"] or filters.get("until") and b.when > filters["until"]:
                        continue
                    outcome.result["backups"].append({
                        "target": target.name, "method": target.method, "store": dest, "name": b.name,
                        "when": b.when.isoformat(), "size": b.size, "added": b.added, "checksum": b.has_checksum,
                        "protected": b.protected,
                        "sidecars": sorted(b.sidecars)})
                outcome.result["partials"] += [{"target": target.name, "store": dest, "folder": p.folder, "name": p.name}
                                               for p in found.partials]
                outcome.result["safety_copies"] += [{"target": target.name, "store": dest, "folder": c.folder,
                                                     "name": c.name, "when": c.when.isoformat(), "size": c.size}
                                                    for c in saved]
                for path in found.foreign:
                    if (dest, path) not in seen_foreign:
                        seen_foreign.add((dest, path))
                        folder, _, name = path.rpartition("/")
                        outcome.result["foreign"].append({"store": dest, "folder": folder, "name": name})
    outcome.result["targets"] = [summary_of(t, outcome.result) for t in chosen]
    return outcome


def summary_of(target: Target, listed: dict) -> dict:
    """One target's line of `list`: what the agent reports without reading every row."""
    rows = [b for b in listed["backups"] if b["target"] == target.name]
    stores: dict[str, int] = {}
    for row in rows:
        stores[row["store"]] = stores.get(row["store"], 0) + 1
    times = sorted(row["when"] for row in rows)
    return {"target": target.name, "method": target.method, "backups": len(rows), "stores": stores,
            "oldest": times[0] if times else None, "newest": times[-1] if times else None,
            "bytes": sum(row["size"] for row in rows), "unchecked": sum(not row["checksum"] for row in rows),
            "protected": sum(row["protected"] for row in rows),
            "partials": sum(p["target"] == target.name for p in listed["partials"]),
            "safety_copies": sum(c["target"] == target.name for c in listed["safety_copies"])}
