"""A restic repository as a whole: created on request, checked on a budget, its coverage known.

`bak verify` runs `restic check` on each restic destination of the targets it verifies, reading
the next 1/N of the data (`--read-data-subset=k/N`, k one more than the last check's): N verifies
read every pack once. Each check is journaled (kind `check`) with the part it read, so the rotation
survives restarts and status can say since when every part of the data has been read.
"""

from __future__ import annotations

from bak.config import Config, Target
from bak.errors import BadInput, BakError
from bak.journal import Journal
from bak.report import Outcome
from bak.run import Hosts
from bak.stores import open_store
from bak.stores import resticcmd as cmd

HISTORY = 10000  # journaled checks read back: far more than any cycle (at most 9999 parts)


def init(config: Config, name: str) -> Outcome:
    """`restic init` for a restic destination; refused when a repository is already there."""
    dest = config.destinations.get(name)
    if dest is None:
        raise BadInput(f"no destination named {name!r}", where="NAME",
                       hint="Destinations: " + ", ".join(sorted(config.destinations)))
    if dest.kind != "restic":
        raise BadInput(f"{name} is a {dest.kind} destination: only a restic repository is initialised", where="NAME",
                       hint="Folder destinations are created by their first backup.")
    with Hosts(config) as hosts:
        store = open_store(dest, hosts)
        store.init()
    return Outcome({"destination": name, "backend": store.backend, "repository": store.describe(), "created": True})


def checks_of(journal: Journal, destination: str) -> list[dict]:
    """The journaled checks of one repository, newest first."""
    return [op for op in journal.query(kind="check", limit=HISTORY) if op["details"].get("destination") == destination]


def _part(op: dict) -> tuple[int, int] | None:
    details = op["details"]
    part, groups = details.get("part"), details.get("groups")
    return (part, groups) if isinstance(part, int) and isinstance(groups, int) else None


def coverage(checks: list[dict]) -> dict | None:
    """The last check, and since when every part of the data has been read (None: not yet all of it)."""
    if not checks:
        return None
    last = checks[0]
    passed = [(op["started_at"], *_part(op)) for op in checks if op["status"] == "ok" and _part(op)]
    return {"at": last["started_at"], "status": last["status"], "part": last["details"].get("subset"),
            "fully_read_since": cmd.coverage(passed)}


def destinations_of(config: Config, targets: list[Target]) -> list[str]:
    return sorted({d for t in targets for d in t.destinations if config.destinations[d].kind == "restic"})


def check_repositories(config: Config, targets: list[Target], hosts: Hosts, journal: Journal, outcome: Outcome,
                       progress=lambda message: None) -> list[dict]:
    """One `restic check` per restic destination of `targets`, each reading its next part of the data."""
    rows = []
    for name in destinations_of(config, targets):
        dest = config.destinations[name]
        groups = cmd.parse_subset(dest.check_subset)
        previous = next((_part(op) for op in checks_of(journal, name) if op["status"] == "ok" and _part(op)), None)
        part = cmd.next_part(previous, groups)
        row = {"destination": name, "subset": f"{part[0]}/{part[1]}", "ok": False}
        progress(f"restic check of {name}, reading part {part[0]} of {part[1]} of the data")
        try:
            with journal.operation("check", None, {"destination": name, "subset": row["subset"], "part": part[0],
                                                   "groups": part[1]}) as op:
                found = open_store(dest, hosts).check(part)
                row.update(ok=found["ok"], packs_read=found.get("packs_read"), packs_total=found.get("packs_total"))
                op.details.update(packs_read=found.get("packs_read"), packs_total=found.get("packs_total"))
                if not found["ok"]:
                    row["error"] = found.get("message") or "restic check found errors"
                    op.status, op.error_tail = "failed", row["error"]
                    outcome.problem("repository_damaged", f"restic check of {name}: {row['error']}", name,
                                    "Restore from another destination (--from); see restic's words above, "
                                    "then `restic check --read-data` and `restic repair` by hand.")
        except BakError as exc:
            row["error"] = exc.message
            outcome.failed(exc)
        row["fully_read_since"] = (coverage(checks_of(journal, name)) or {}).get("fully_read_since")
        rows.append(row)
    return rows
