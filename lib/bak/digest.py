"""What the agent reads of a command: an envelope that fits whole, summaries first, every row in a file.

Claude Code keeps about 30,000 characters of a command's output and drops the middle of more, so an
envelope the agent acts on must fit whole. Under --json, each command's envelope is a view of its full
result: the lists of rows (backups, decisions, checks, journal entries) are capped at `--limit` rows
(DEFAULT_ROWS without it), bulky fields a summary does not need are left out, the same problem met by many
targets is said once, and when that is still too long, fewer rows, then fewer summaries, until the
envelope fits BUDGET characters (CEILING with an explicit --limit). Whenever the view leaves anything
out, the full envelope is written to a file of bak's state folder (0600) and `detail.file` names it.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

BUDGET = 18_000  # characters of the whole envelope by default: under the 20,000 the prompts count on
CEILING = 28_000  # with an explicit --limit: still under the 30,000 Claude Code keeps
DEFAULT_ROWS = 20
KEPT_FILES = 20  # detail files kept in the state folder, newest first
WHERES_SHOWN = 40  # places named in one grouped error before "and N more"


@dataclass(frozen=True)
class Rows:
    """A list of rows at `path` ("backups", "targets[].stores[].decisions"), capped across all its instances."""

    path: str
    first: str | None = None  # "key=value": rows shown before the others (failures, removals)


@dataclass(frozen=True)
class View:
    rows: tuple[Rows, ...] = ()  # detail: capped at --limit, then as the budget needs
    summaries: tuple[Rows, ...] = ()  # cut only when no row is left and it still does not fit
    drop: tuple[str, ...] = ()  # bulky fields the summary does without ("steps[].commands")
    pick: dict[str, tuple[str, ...]] = field(default_factory=dict)  # objects cut down to these keys
    clip: dict[str, int] = field(default_factory=dict)  # long texts cut to so many characters


_DECISIONS = Rows("targets[].stores[].decisions", first="keep=False")
VIEWS: dict[str, View] = {
    "list": View(rows=(Rows("backups", first="checksum=False"), Rows("partials"), Rows("foreign"),
                       Rows("safety_copies")), summaries=(Rows("targets"),)),
    "prune": View(rows=(_DECISIONS, Rows("decisions", first="keep=False"), Rows("targets[].stores[].restic_forget"),
                        Rows("targets[].stores[].stale_partials"), Rows("targets[].stores[].foreign"),
                        Rows("targets[].stores[].safety_copies")),
                  summaries=(Rows("targets"),), drop=("targets[].stores[].decisions[].sidecars",
                                                      "targets[].stores[].decisions[].snapshots")),
    "verify": View(rows=(Rows("checked", first="ok=False"),), summaries=(Rows("targets"), Rows("repositories")),
                   drop=("checked[].sha256",)),
    "log": View(rows=(Rows("operations", first="status=failed"),),
                pick={"operations[].details": ("name", "store", "reason", "method", "into", "database", "backup")},
                clip={"operations[].error_tail": 400}),
    "status": View(summaries=(Rows("targets"), Rows("destinations")),
                   drop=("targets[].problems", "targets[].newest.added", "targets[].copies.media",
                         "targets[].copies.offsite_destinations", "targets[].partials", "destinations[].forecast.points",
                         "destinations[].forecast.percent")),  # each problem is an error too, said once for all
    "create": View(summaries=(Rows("targets", first="status=failed"),),
                   pick={"targets[].copies[]": ("store", "ok", "error", "location")}),
    "sync": View(rows=(Rows("targets[].planned"), Rows("targets[].copied"), Rows("targets[].failed")),
                 summaries=(Rows("targets"),)),
    "dr plan": View(summaries=(Rows("steps"),),
                    drop=("steps[].copies", "steps[].commands", "steps[].offsite_commands", "steps[].description",
                          "steps[].method", "steps[].backup.size", "steps[].backup.drilled_at",
                          "steps[].source.location", "steps[].source.check", "kit", "secrets")),
    "dr drill": View(summaries=(Rows("steps", first="passed=False"),)),
    "drill": View(summaries=(Rows("drills", first="passed=False"),)),
    "wizard strategy": View(summaries=(Rows("rows", first="ok=False"), Rows("recommendations"))),
    "metrics": View(clip={"text": 6_000}),
    "schedule": View(rows=(Rows("changes"),), summaries=(Rows("jobs"),), clip={"changes[].content": 600}),
    "doctor": View(summaries=(Rows("checks", first="level=fail"),)),
    "discover": View(summaries=(Rows("items"),)),
    "config reference": View(clip={"text": 16_000}),
    "config example": View(clip={"text": 16_000}),
}
ALIASES = {"pg verify": "verify", "pg dump": "create", "pg drill": "drill", "schedule show": "schedule",
           "schedule install": "schedule", "schedule remove": "schedule"}


def view_of(command: str) -> View:
    return VIEWS.get(ALIASES.get(command, command), View())


def fit(env: dict, limit: int | None = None, state_dir=None) -> dict:
    """The envelope to print: `env` itself when it fits whole, else the first view of it that fits: its
    lists of rows capped, then bulky fields left out and errors grouped, then fewer and fewer rows. With a
    view, `detail.file` names the file that holds `env` whole (`state_dir` gives its folder)."""
    if limit is None and _size(env) <= BUDGET:
        return env
    view = view_of(env["command"])
    ceiling = CEILING if limit else BUDGET
    caps = _Caps(rows=limit or DEFAULT_ROWS)
    shown, omitted = _apply(env, view, caps)
    left_out = False
    if _size(shown) > ceiling:
        base = copy.deepcopy(env)
        if base["result"] is not None:
            for path in view.drop:
                _drop(base["result"], path)
            for path, keys in view.pick.items():
                _pick(base["result"], path, keys)
            for path, size in view.clip.items():
                _clip(base["result"], path, size)
        base["errors"] = group_errors(base["errors"])
        left_out = base != env
        while True:
            shown, omitted = _apply(base, view, caps)
            _describe(shown, omitted, caps, left_out)
            if _size(shown) <= ceiling or not caps.tighten():
                break
    _describe(shown, omitted, caps, left_out)
    if "detail" in shown:
        shown["detail"]["file"] = _write_detail(env, state_dir, shown)
    return shown


def _describe(shown: dict, omitted: dict[str, int], caps: "_Caps", left_out: bool) -> None:
    if omitted or left_out:
        shown["detail"] = {"file": None, "omitted": omitted, "rows": caps.rows,
                           "hint": "Every row and field is in `file` (JSON). Narrow with --target NAME, "
                                   "or show more rows with --limit N."}


def _size(env: dict) -> int:
    """Characters of the envelope as printed to a pipe (compact JSON)."""
    return len(json.dumps(env, separators=(",", ":"), default=str))


@dataclass
class _Caps:
    """How much of each kind of list is shown; tighten() cuts the next thing, rows first."""

    rows: int
    summaries: int | None = None
    errors: int | None = None
    warnings: int | None = None

    def tighten(self) -> bool:
        if self.rows > 0:
            self.rows //= 2
        elif self.errors is None or self.errors > 3:
            self.errors = 10 if self.errors is None else self.errors // 2
        elif self.summaries is None or self.summaries > 1:
            self.summaries = 64 if self.summaries is None else self.summaries // 2
        elif self.warnings is None or self.warnings > 1:
            self.warnings = 5 if self.warnings is None else self.warnings // 2
        else:
            return False
        return True


def _apply(base: dict, view: View, caps: _Caps) -> tuple[dict, dict[str, int]]:
    shown = copy.deepcopy(base)
    omitted: dict[str, int] = {}
    if shown["result"] is not None:
        for rows in view.rows:
            _count(omitted, rows.path, _cap(shown["result"], rows, caps.rows))
        for rows in view.summaries:
            if caps.summaries is not None:
                _count(omitted, rows.path, _cap(shown["result"], rows, caps.summaries))
    for key, cap in (("errors", caps.errors), ("warnings", caps.warnings)):
        if cap is not None and len(shown[key]) > cap:
            _count(omitted, key, len(shown[key]) - cap)
            shown[key] = shown[key][:cap]
    return shown, omitted


def _count(omitted: dict[str, int], path: str, count: int) -> None:
    if count:
        omitted[path] = omitted.get(path, 0) + count


# --- paths: "a[].b.c[]" walks lists ([] = every item) and keys ---------------------------------------
def _holders(node, steps: list[str]):
    """(container, key) of every value the path reaches, in document order."""
    if not steps:
        return
    step, rest = steps[0], steps[1:]
    each = step.endswith("[]")
    key = step[:-2] if each else step
    if not isinstance(node, dict) or key not in node:
        return
    if each and isinstance(node[key], list):
        if not rest:
            for index in range(len(node[key])):
                yield node[key], index
        for item in node[key]:
            yield from _holders(item, rest)
    elif not rest:
        yield node, key
    else:
        yield from _holders(node[key], rest)


def _split(path: str) -> list[str]:
    return path.split(".")


def _drop(result: dict, path: str) -> None:
    for holder, key in list(_holders(result, _split(path))):
        if isinstance(holder, dict):
            del holder[key]


def _pick(result: dict, path: str, keys: tuple[str, ...]) -> None:
    for holder, key in _holders(result, _split(path)):
        value = holder[key]
        if isinstance(value, dict):
            holder[key] = {k: v for k, v in value.items() if k in keys}


def _clip(result: dict, path: str, size: int) -> None:
    for holder, key in _holders(result, _split(path)):
        value = holder[key]
        if isinstance(value, str) and len(value) > size:
            holder[key] = value[:size] + f"\n[... {len(value) - size} more characters in detail.file]"


def _matches(row, first: str | None) -> bool:
    if not first or not isinstance(row, dict):
        return False
    key, _, wanted = first.partition("=")
    return str(row.get(key)) == wanted


def _cap(result: dict, rows: Rows, limit: int) -> int:
    """Keep `limit` rows over all the lists at the path (`first` rows before the others, document order kept
    within); return how many were left out."""
    lists = [holder[key] for holder, key in _holders(result, _split(rows.path)) if isinstance(holder[key], list)]
    everything = [(i, j, row) for i, rows_ in enumerate(lists) for j, row in enumerate(rows_)]
    if len(everything) <= limit:
        return 0
    ranked = sorted(everything, key=lambda entry: not _matches(entry[2], rows.first))  # stable: order kept
    kept = {(i, j) for i, j, _ in ranked[:limit]}
    for i, rows_ in enumerate(lists):
        rows_[:] = [row for j, row in enumerate(rows_) if (i, j) in kept]
    return len(everything) - limit


def group_errors(errors: list[dict]) -> list[dict]:
    """The same problem met in many places is one error naming them all ("3-2-1 not met" on 30 targets).
    A message that starts with its own `where` ("db-01: ...") is compared without it."""
    groups: dict[tuple, list[dict]] = {}
    for error in errors:
        where = error.get("where")
        message = error["message"]
        if where and message.startswith(f"{where}: "):
            message = message[len(where) + 2:]
        groups.setdefault((error["code"], message, error.get("hint")), []).append(error)
    grouped = []
    for (code, message, hint), members in groups.items():
        if len(members) == 1:
            grouped.append(members[0])
            continue
        wheres = list(dict.fromkeys(str(m["where"]) for m in members if m.get("where")))
        shown = ", ".join(wheres[:WHERES_SHOWN]) + (f" and {len(wheres) - WHERES_SHOWN} more"
                                                    if len(wheres) > WHERES_SHOWN else "")
        grouped.append({"code": code, "message": f"{message} ({len(members)} times)" if len(wheres) < len(members)
                        else message, "where": shown or None, "hint": hint})
    return grouped


# --- the detail file ------------------------------------------------------------------------------
def _write_detail(env: dict, state_dir, shown: dict) -> str | None:
    """The whole envelope, indented (so a reader can page it by lines), 0600 in STATE/details/."""
    from bak import paths

    try:
        folder = paths.ensure_private_dir(Path(state_dir() if callable(state_dir) else state_dir or paths.state_dir())
                                          / "details")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")  # two runs of one process in a second differ
        path = folder / f"{env['command'].replace(' ', '-')}-{stamp}-{os.getpid()}.json"
        paths.write_atomically(path, json.dumps(env, indent=1, default=str).encode("utf-8") + b"\n", mode=0o600)
        _rotate(folder)
        return str(path)
    except OSError as exc:
        shown["warnings"].append(f"the full output could not be written to bak's state folder ({exc.strerror or exc}); "
                                 "run the command again with --target NAME to see fewer rows")
        return None


DETAIL_NAME = re.compile(r"[a-z]+(?:-[a-z]+)*-\d{8}T\d{12}-\d+\.json")


def _rotate(folder: Path) -> None:
    """The newest KEPT_FILES detail files stay; only files named as bak names them are ever removed."""
    files = sorted((p for p in folder.iterdir() if DETAIL_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEPT_FILES:]:
        old.unlink(missing_ok=True)
