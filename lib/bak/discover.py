"""`bak discover`: what exists on the configured hosts, and what no target covers.

Guests on every SSH host that has Proxmox's `qm` (`qm list` and `pct list`, read by vzdump's own
parser); the databases of every PostgreSQL server a pg_dump target reaches (pg_database, as `psql -l`
lists it, asked with that target's role and secret); the volumes of the engines docker_volume targets
use (`docker volume ls`, or podman's). Each host over its one connection, all hosts at once; a host
that cannot be reached is reported and the others still answer.

The inventory is journaled (kind `discover`): `bak status` counts, from the newest one, what the
current config leaves unprotected.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from bak.config import LOCAL, Config, Target
from bak.errors import BakError, HostKeyMismatch, HostKeyUnknown, TransportError
from bak.report import Outcome

DATABASES_SQL = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1;"
MAINTENANCE_DATABASES = {"postgres"}  # created by initdb for tools to connect to; holds no data of its own
UNREACHABLE = (TransportError, HostKeyUnknown, HostKeyMismatch)


def volume_list_argv(cli: str) -> list[str]:
    return [cli, "volume", "ls", "--format", "{{.Name}}"]


def parse_names(text: str) -> list[str]:
    """One name a line (`docker volume ls --format {{.Name}}`, psql's unaligned rows)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def server_of(options: dict) -> str:
    return f"{options['address']}:{options['port']}"


def covers(target: Target, item: dict) -> bool:
    if target.host != item.get("host"):
        return False
    options = target.options
    if item.get("kind") == "guest":
        return target.method == "vzdump" and options["vmid"] == item.get("vmid")
    if item.get("kind") == "database":
        return target.method == "pg_dump" and server_of(options) == item.get("server") and options["database"] == item.get("name")
    if item.get("kind") == "volume":
        return target.method == "docker_volume" and options["cli"] == item.get("cli") and options["volume"] == item.get("name")
    return False


def coverage(config: Config, items: list) -> list[dict]:
    """Each item with the enabled targets that back it up (none: unprotected). Items of an unknown
    shape (a hand-edited journal) are left out."""
    checked = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("host"), str) and isinstance(item.get("name"), str):
            checked.append({**item, "covered_by": [t.name for t in config.targets if t.enabled and covers(t, item)]})
    return checked


def label(item: dict) -> str:
    kind, name, host = item.get("kind"), item["name"], item["host"]
    if kind == "guest":
        return f"guest {item.get('vmid')} ({name}) on {host}"
    if kind == "database":
        return f"database {name} on {host} ({item.get('server')})"
    if kind == "volume":
        return f"{item.get('cli')} volume {name} on {host}"
    return f"{name} on {host}"


def _probe(session, host_name: str, pg_targets: list[Target], clis: list[str]) -> tuple[list[dict], list[dict]]:
    """Everything one host can tell, over its one connection: (items, problems)."""
    from bak.methods import pg_dump
    from bak.methods.vzdump import parse_guest_list

    runner = session.hosts.runner(host_name)
    items, problems = [], []
    try:
        if host_name != LOCAL and runner.has_tool("qm"):
            guests = parse_guest_list(runner.run(["qm", "list"]).stdout_text)
            containers = runner.run(["pct", "list"], check=False)
            found = {vmid: (row, "qemu") for vmid, row in guests.items()}
            if containers.returncode == 0:
                found.update({vmid: (row, "lxc") for vmid, row in parse_guest_list(containers.stdout_text).items()})
            items += [{"kind": "guest", "host": host_name, "vmid": vmid, "name": row["name"],
                       "detail": f"{guest}, {row['status']}"} for vmid, (row, guest) in sorted(found.items())]
        for target in pg_targets:
            try:
                with pg_dump.Session(session.ctx, target) as pg:
                    names = [row[0] for row in pg.sql(DATABASES_SQL)]
            except BakError as exc:
                if isinstance(exc, UNREACHABLE):
                    raise
                problems.append({"host": host_name, "what": f"databases at {server_of(target.options)}",
                                 "error": exc.message})
                continue
            items += [{"kind": "database", "host": host_name, "server": server_of(target.options), "name": name}
                      for name in names if name not in MAINTENANCE_DATABASES]
        for cli in clis:
            try:
                names = parse_names(runner.run(volume_list_argv(cli)).stdout_text)
            except BakError as exc:
                if isinstance(exc, UNREACHABLE):
                    raise
                problems.append({"host": host_name, "what": f"{cli} volumes", "error": exc.message})
                continue
            items += [{"kind": "volume", "host": host_name, "cli": cli, "name": name} for name in names]
    except UNREACHABLE as exc:
        problems.append({"host": host_name, "what": "the host", "error": exc.message})
    return items, problems


def discover(config: Config) -> Outcome:
    from bak.actions import Session

    servers: dict[tuple, Target] = {}
    for target in config.targets:
        if target.method == "pg_dump":
            servers.setdefault((target.host, server_of(target.options)), target)
    clis = {(t.host, t.options["cli"]) for t in config.targets if t.method == "docker_volume"}
    hosts = sorted(set(config.hosts) | {h for h, _ in servers} | {h for h, _ in clis})
    outcome = Outcome({"items": [], "unprotected": 0, "problems": []})
    with Session(config) as session:
        for name in hosts:
            session.hosts.runner(name)  # made here, used by one thread each
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            probes = [pool.submit(_probe, session, name, [t for (h, _), t in servers.items() if h == name],
                                  sorted(cli for h, cli in clis if h == name)) for name in hosts]
            for future in probes:
                items, problems = future.result()
                outcome.result["items"] += items
                outcome.result["problems"] += problems
        with session.journal.operation("discover", None) as op:
            op.details = {"items": outcome.result["items"], "problems": outcome.result["problems"]}
            if outcome.result["problems"]:
                op.status = "partial"
    outcome.result["items"] = coverage(config, outcome.result["items"])
    unprotected = [item for item in outcome.result["items"] if not item["covered_by"]]
    outcome.result["unprotected"] = len(unprotected)
    for item in unprotected:
        outcome.problem("unprotected", f"{label(item)}: no target backs it up", item["host"],
                        "Add a target for it (references/config.md), or ignore it if it holds nothing to keep.")
    for problem in outcome.result["problems"]:
        outcome.problem("discover_failed", f"{problem['host']}: could not list {problem['what']}: {problem['error']}",
                        problem["host"])
    return outcome


def coverage_summary(config: Config, newest: dict | None) -> dict | None:
    """What the newest discover found, checked against the current config (for `bak status`)."""
    if not newest or newest["status"] not in ("ok", "partial"):
        return None
    items = newest["details"].get("items")
    checked = coverage(config, items if isinstance(items, list) else [])
    unprotected = [label(item) for item in checked if not item["covered_by"]]
    return {"discovered_at": newest["started_at"], "items": len(checked), "unprotected": len(unprotected),
            "unprotected_items": unprotected}
