"""The spec's troubleshooting sections as checks, each with its fix: SSH, Proxmox storage and locks,
PostgreSQL readiness and rights, tools on both ends, destination space, the biggest prunable backups."""

from __future__ import annotations

from datetime import datetime

from bak.config import LOCAL, Config
from bak.errors import BakError
from bak.report import Outcome
from bak.run import Hosts

TOOLS = {"pg_dump": ["pg_dump", "pg_restore", "psql", "pg_isready"], "rsync": ["rsync"], "config": ["rsync"],
         "vault": ["git", "rsync"], "docker_volume": ["tar", "find", "sha256sum"], "vzdump": ["vzdump", "qm", "pvesm", "zstd"]}


class Checks:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, check: str, subject: str, level: str, detail: str, fix: str | None = None) -> None:
        self.rows.append({"check": check, "subject": subject, "level": level, "detail": detail, "fix": fix})


def doctor(config: Config) -> Outcome:
    checks = Checks()
    _journal(checks)
    with Hosts(config) as hosts:
        reachable = _ssh(config, hosts, checks)
        _tools(config, hosts, checks, reachable)
        _proxmox(config, hosts, checks, reachable)
        _postgres(config, hosts, checks, reachable)
        _space(config, hosts, checks, reachable)
    _prunable(config, checks)
    outcome = Outcome({"checks": checks.rows})
    for row in checks.rows:
        text = f"{row['check']} {row['subject']}: {row['detail']}"
        if row["level"] == "fail":
            outcome.problem("doctor_" + row["check"].replace(" ", "_"), text, row["subject"], row["fix"])
        elif row["level"] == "warn":
            outcome.warnings.append(text + (f" (fix: {row['fix']})" if row["fix"] else ""))
    return outcome


def _journal(checks: Checks) -> None:
    """The journal opens and passes SQLite's own check; a copy set aside earlier is pointed out."""
    import sqlite3

    from bak.journal import Journal
    from bak.paths import state_dir

    path = state_dir() / "journal.sqlite"
    aside = sorted(p.name for p in path.parent.glob(path.name + ".damaged-*") if not p.name.endswith(("-wal", "-shm")))
    try:
        journal = Journal(path)
    except BakError as exc:
        checks.add("journal", str(path), "fail", exc.message, exc.hint)
        return
    try:
        verdict = journal.db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    finally:
        journal.close()
    if verdict != "ok":
        checks.add("journal", str(path), "fail", f"SQLite reports: {verdict}",
                   f"Move {path} aside; bak starts a new journal (history stays in the old file).")
    elif aside:
        checks.add("journal", str(path), "warn", f"damaged journals kept aside: {', '.join(aside)}",
                   f"Read them with sqlite3 if the history matters, then remove them from {path.parent}.")
    else:
        checks.add("journal", str(path), "ok", "readable, SQLite's quick_check passes")


def _ssh(config: Config, hosts: Hosts, checks: Checks) -> set[str]:
    reachable = {LOCAL}
    for name, host in sorted(config.hosts.items()):
        try:
            hosts.runner(name).run(["true"])
            reachable.add(name)
            checks.add("ssh", name, "ok", f"key auth and host key OK ({host.user}@{host.address}:{host.port})")
        except BakError as exc:
            checks.add("ssh", name, "fail", exc.message, exc.hint)
    return reachable


def _tools(config: Config, hosts: Hosts, checks: Checks, reachable: set[str]) -> None:
    needed: dict[str, set[str]] = {}
    for target in config.targets:
        if target.method == "pg_dump" and target.options.get("bin_dir"):
            continue  # found through bin_dir, checked by the PostgreSQL check
        needed.setdefault(target.host, set()).update(TOOLS[target.method])
        if target.method == "docker_volume":
            needed[target.host].add(target.options["cli"])
        if target.method in ("rsync", "config", "vault"):
            for dest in target.destinations:
                needed.setdefault(config.destinations[dest].host, set()).add("rsync")
    for host, tools in sorted(needed.items()):
        if host not in reachable:
            continue
        runner = hosts.runner(host)
        missing = sorted(t for t in tools if not runner.has_tool(t))
        if missing:
            checks.add("tools", host, "fail", f"missing: {', '.join(missing)}",
                       f"install them on {host} (Debian: apt-get install {' '.join(missing)})")
        else:
            checks.add("tools", host, "ok", f"present: {', '.join(sorted(tools))}")


def _proxmox(config: Config, hosts: Hosts, checks: Checks, reachable: set[str]) -> None:
    from bak.methods.vzdump import parse_guest_list

    for target in config.targets:
        if target.method != "vzdump" or target.host not in reachable:
            continue
        runner = hosts.runner(target.host)
        vmid = target.options["vmid"]
        tool, label = ("pct", "CT") if target.options.get("guest") == "lxc" else ("qm", "VM")
        try:
            guests = parse_guest_list(runner.run([tool, "list"]).stdout_text)
            if vmid not in guests:
                checks.add("proxmox vm", target.name, "fail", f"{label} {vmid} is not on {target.host}",
                           f"check vzdump.vmid and vzdump.guest ({tool} list)")
                continue
            lock = next((line.split(": ", 1)[1] for line in runner.run([tool, "config", str(vmid)]).stdout_text.splitlines()
                         if line.startswith("lock: ")), None)
            if lock:
                checks.add("proxmox lock", target.name, "fail", f"{label} {vmid} is locked ({lock})",
                           f"if no backup is running: {tool} unlock {vmid}")
            else:
                checks.add("proxmox lock", target.name, "ok", f"{label} {vmid} ({guests[vmid]['name']}) is not locked")
        except BakError as exc:
            checks.add("proxmox vm", target.name, "fail", exc.message, exc.hint)


def _postgres(config: Config, hosts: Hosts, checks: Checks, reachable: set[str]) -> None:
    from bak.methods.base import Context
    from bak.methods.pg_dump import PgDump, Session

    for target in config.targets:
        if target.method != "pg_dump" or target.host not in reachable:
            continue
        ctx = Context(config, hosts, None, datetime.now())
        try:
            with Session(ctx, target) as session:
                facts = PgDump().precheck(session)
            checks.add("postgresql", target.name, "ok",
                       f"ready; {facts['user']} can dump {target.options['database']} ({facts['database_size']} bytes)")
        except BakError as exc:
            checks.add("postgresql", target.name, "fail", exc.message,
                       exc.hint or f"pg_isready -h {target.options['address']} -p {target.options['port']}")


def _space(config: Config, hosts: Hosts, checks: Checks, reachable: set[str]) -> None:
    from bak.status import CRITICAL_PERCENT
    from bak.stores import open_store

    for name, dest in sorted(config.destinations.items()):
        if dest.host not in reachable or dest.kind == "restic":
            continue
        try:
            used = open_store(dest, hosts).usage().used_percent
        except BakError as exc:
            checks.add("space", name, "fail", exc.message, exc.hint)
            continue
        level = "fail" if used >= CRITICAL_PERCENT else ("warn" if used >= dest.warn_percent else "ok")
        checks.add("space", name, level, f"{used:.1f}% used",
                   None if level == "ok" else "bak prune --dry-run; du -sh on the destination's folders")


def _prunable(config: Config, checks: Checks) -> None:
    from bak.prune import prune

    plan = prune(config, [t for t in config.targets if t.enabled], dry_run=True, force=True)
    removable = sorted(((d["size"], e["target"], s["store"], d["name"])
                        for e in plan.result["targets"] for s in e["stores"] for d in s["decisions"] if not d["keep"]),
                       reverse=True)[:5]
    if removable:
        from bak.report import human_size

        checks.add("prunable", "retention", "warn",
                   "biggest backups the policies would remove: " + ", ".join(f"{n} on {st} ({human_size(sz)})"
                                                                            for sz, _, st, n in removable),
                   "bak prune --dry-run, then bak prune")
    else:
        checks.add("prunable", "retention", "ok", "nothing to prune")
