"""`bak report --html FILE`: the homelab's backups at a glance, in one self-contained HTML file.

People would rather look than read. Per target: a calendar of its backups (kept or to be pruned under
its policy, verified, drilled, failed runs), its size and the length of its runs over time. Per
destination: its use, and when it fills at the current growth. Then the 3-2-1 matrix and the journal's
last operations. The charts are inline SVG drawn here; the file holds no script and fetches nothing
when opened (its Content-Security-Policy forbids it), so it works offline, from a USB stick, anywhere.
"""

from __future__ import annotations

import html
import socket
import string
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from bak import catalog, forecast, prune, status
from bak.config import Config, Target
from bak.errors import BadInput
from bak.journal import Journal
from bak.report import Outcome, human_size
from bak.run import Hosts

TEMPLATE = Path(__file__).parent / "templates" / "report.html"
DEFAULT_NAME = "report.html"
LAST_OPERATIONS = 30
FAILED = ("failed", "partial", "interrupted")
PROJECTION_DAYS = 90  # how far ahead a destination's chart draws its growth line at most


@dataclass
class Shown:
    """One backup as the calendar shows it: one mark, whatever number of copies it has."""

    name: str
    when: datetime
    size: int
    stores: dict[str, str] = field(default_factory=dict)  # store -> "keep: reason" / "prune: reason"
    kept: bool = True
    protected: bool = False
    verified: bool = False
    verify_failed: bool = False
    drilled: bool = False


@dataclass
class TargetView:
    target: Target
    health: dict
    backups: list[Shown]              # every backup present, oldest first
    failures: list[tuple[datetime, str]]  # failed runs: local time, first line of the error
    durations: list[tuple[datetime, float]]


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _local(text: str | None) -> datetime | None:
    """A journal time (UTC ISO) as the naive local time backups are named in."""
    when = status._when(text)
    return when.astimezone().replace(tzinfo=None) if when else None


def default_path() -> Path:
    from bak.paths import state_dir

    return state_dir() / DEFAULT_NAME


def report(config: Config, path: Path | None = None, days: int = 31, now: datetime | None = None,
           force: bool = False) -> Outcome:
    """`path` given by the user is written only where no file is, unless `force`; bak's own default one is
    rewritten each time. Either way only a regular file is ever replaced."""
    from bak.paths import output_file, write_output
    from bak.secrets import scrub

    now = now or datetime.now().replace(microsecond=0)
    given = path is not None
    path = (path or default_path()).expanduser()
    output_file(path, "--html", force=force or not given)
    clock = time.monotonic()
    health = status.status(config, now)
    views, usage = _gather(config, health.result, now, days)
    journal = Journal.default()
    try:
        operations = journal.query(limit=LAST_OPERATIONS)
    finally:
        journal.close()
    page = render(config, health.result, views, usage, operations, now, days)
    data = scrub(page).encode()
    write_output(path, data, "--html")
    start = window_start(now, days)
    outcome = Outcome({
        "path": str(path), "bytes": len(data), "days": days, "summary": health.result["summary"],
        "targets": [{"target": v.target.name, **_counts(v, start)} for v in views],
        "destinations": [{"destination": d["destination"], "level": d["level"],
                          "outlook": forecast.outlook_text(d.get("forecast")) if "forecast" in d else None}
                         for d in health.result["destinations"]],
        "generation_s": round(time.monotonic() - clock, 3)})
    outcome.warnings.extend(f"{e['where']}: {e['message']}" for e in health.errors if e["code"] == "destination_unreachable")
    return outcome


def window_start(now: datetime, days: int) -> datetime:
    """Midnight of the calendar's first day: `days` days up to and including today."""
    return datetime.combine((now - timedelta(days=days - 1)).date(), datetime.min.time())


def _length(row: dict) -> float | None:
    """Seconds a journaled operation took."""
    started, ended = status._when(row["started_at"]), status._when(row["ended_at"])
    return (ended - started).total_seconds() if started and ended else None


def _counts(view: TargetView, start: datetime) -> dict:
    shown = [b for b in view.backups if b.when >= start]
    return {"backups": len(shown), "kept": sum(b.kept for b in shown), "to_prune": sum(not b.kept for b in shown),
            "verified": sum(b.verified for b in shown), "drilled": sum(b.drilled for b in shown),
            "failed_runs": sum(1 for when, _ in view.failures if when >= start)}


def _gather(config: Config, health: dict, now: datetime, days: int) -> tuple[list[TargetView], dict]:
    """Every backup with its retention decision per store, the journal's checks and runs; each destination's
    space series. Sizes are read while the hosts are connected (a snapshot's size is in its manifest)."""
    journal = Journal.default()
    try:
        since = (now - timedelta(days=max(days, 400))).astimezone(timezone.utc).isoformat(timespec="seconds")
        creates = journal.query(kind="create", since=since, limit=200_000)
        verifies = journal.query(kind="verify", since=since, limit=200_000)
        drills = journal.query(kind="drill", status="ok", since=since, limit=200_000)
        pruned = status.pruned_since(journal, now - timedelta(seconds=forecast.WINDOW_S))
    finally:
        journal.close()
    checked_ok = {(r["target"], (r["details"] or {}).get("name")) for r in verifies if r["status"] == "ok"}
    checked_bad = {(r["target"], (r["details"] or {}).get("name")) for r in verifies if r["status"] in FAILED}
    drilled = {(r["target"], (r["details"] or {}).get("name")) for r in drills}
    entries = {entry["target"]: entry for entry in health["targets"]}
    views, usage = [], {}
    with Hosts(config) as hosts:
        scanned = status.gather(config, hosts)
        for target in (t for t in config.targets if t.enabled):
            shown: dict[str, Shown] = {}
            for dest in target.destinations:
                row = scanned[dest]
                if row["store"] is None:
                    continue
                listing = catalog.listing_from(target, row["store"], row["indexes"])
                plan = prune.plan_listing(config, target, row["store"], listing, now)
                for decision in plan.decisions:
                    backup = plan.by_name[decision.name]
                    if backup.in_future(now):
                        continue
                    item = shown.setdefault(backup.name, Shown(backup.name, backup.when, backup.size))
                    item.stores[dest] = ("keep: " if decision.keep else "prune: ") + decision.reason
                    item.kept = item.kept and decision.keep
                    item.protected = item.protected or backup.protected
            for item in shown.values():
                key = (target.name, item.name)
                item.verified, item.drilled = key in checked_ok, key in drilled
                item.verify_failed = key in checked_bad and not item.verified
            runs = [r for r in creates if r["target"] == target.name]
            failures = [(_local(r["started_at"]), status.first_line(r["error_tail"])) for r in runs if r["status"] in FAILED]
            durations = [(_local(r["started_at"]), _length(r)) for r in runs if r["status"] == "ok" and _length(r) is not None]
            views.append(TargetView(target, entries.get(target.name, {}), sorted(shown.values(), key=lambda b: b.when),
                                    sorted(f for f in failures if f[0]), sorted(durations)))
        for name, row in scanned.items():
            if row["error"] is None and row["usage"] is not None:  # a remote restic backend reports no space
                usage[name] = status.space_series(name, row, pruned, now)
    return views, usage


# --- drawing ---------------------------------------------------------------------------------
CELL_W, CELL_H, GAP, LEFT, TOP = 70, 46, 3, 58, 18
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def calendar_svg(view: TargetView, first: date, last: date) -> str:
    """Weeks as rows, Monday first; in each day one mark per backup made that day, and one per failed run."""
    start = first - timedelta(days=first.weekday())
    weeks = (last - start).days // 7 + 1
    width, height = LEFT + 7 * (CELL_W + GAP), TOP + weeks * (CELL_H + GAP)
    parts = [f'<svg class="calendar" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f"<title>Backups of {esc(view.target.name)} from {first} to {last}</title>"]
    parts += [f'<text class="axis" x="{LEFT + i * (CELL_W + GAP) + CELL_W / 2}" y="12" text-anchor="middle">{d}</text>'
              for i, d in enumerate(WEEKDAYS)]
    by_day: dict[date, list] = {}
    for backup in view.backups:
        by_day.setdefault(backup.when.date(), []).append(backup)
    for when, error in view.failures:
        by_day.setdefault(when.date(), []).append((when, error))
    for week in range(weeks):
        monday = start + timedelta(days=7 * week)
        y = TOP + week * (CELL_H + GAP)
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + CELL_H / 2 + 4}" text-anchor="end">{monday:%b %d}</text>')
        for weekday in range(7):
            day = monday + timedelta(days=weekday)
            x = LEFT + weekday * (CELL_W + GAP)
            inside = first <= day <= last
            parts.append(f'<rect class="day{"" if inside else " outside"}" x="{x}" y="{y}" width="{CELL_W}" '
                         f'height="{CELL_H}" rx="3"><title>{day:%A %Y-%m-%d}</title></rect>')
            parts.append(f'<text class="daynum" x="{x + 3}" y="{y + 10}">{day.day}</text>')
            if inside:
                parts += _day_marks(by_day.get(day, []), x, y)
    parts.append("</svg>")
    return "".join(parts)


def _day_marks(items: list, x: float, y: float) -> list[str]:
    if not items:
        return []
    bar = max(1.5, min(14.0, (CELL_W - 6) / len(items) - 1))
    top, full = y + 14, CELL_H - 17
    marks = []
    for index, item in enumerate(sorted(items, key=lambda i: i.when if isinstance(i, Shown) else i[0])):
        left = x + 3 + index * (bar + 1)
        if isinstance(item, Shown):
            classes = ["backup", "kept" if item.kept else "prune"] + \
                [flag for flag in ("verified", "drilled", "protected") if getattr(item, flag)] + \
                (["verify-failed"] if item.verify_failed else [])
            copies = "; ".join(f"{store}: {decision}" for store, decision in item.stores.items())
            notes = ", ".join(n for n, on in (("verified", item.verified), ("verify FAILED", item.verify_failed),
                                               ("restore drill passed", item.drilled), ("protected", item.protected)) if on)
            marks.append(f'<g class="{" ".join(classes)}"><title>{esc(item.name)}\n{item.when:%Y-%m-%d %H:%M}, '
                         f'{esc(human_size(item.size))}' + (f", {esc(notes)}" if notes else "") + f"\n{esc(copies)}</title>"
                         f'<rect x="{left:.1f}" y="{top + 4}" width="{bar:.1f}" height="{full - 4}"/>'
                         + (f'<rect class="cap" x="{left:.1f}" y="{top}" width="{bar:.1f}" height="3"/>'
                            if item.drilled else "") + "</g>")
        else:
            when, error = item
            marks.append(f'<g class="failure"><title>run failed at {when:%Y-%m-%d %H:%M}: {esc(error)}</title>'
                         f'<rect x="{left:.1f}" y="{top}" width="{bar:.1f}" height="{full}"/></g>')
    return marks


def line_svg(points: list[tuple[float, float]], label, css: str, *, low: float = 0.0, high: float | None = None,
             x_end: float | None = None, guides: tuple[tuple[float, str], ...] = (), overlay=None) -> str:
    """A line chart of (epoch seconds, value): `label` formats a value, `guides` are labelled horizontal lines,
    `overlay(px, py)` draws more with the chart's scales."""
    width, height, left, bottom, top = 540, 150, 70, 22, 8
    if not points:
        return (f'<svg class="chart {css}" role="img" width="{width}" height="40" viewBox="0 0 {width} 40">'
                f'<text class="axis" x="{left}" y="24">no data yet</text></svg>')
    x0, x1 = points[0][0], max(x_end or points[-1][0], points[-1][0])
    x1 = x1 if x1 > x0 else x0 + 86400
    high = high if high is not None else max([y for _, y in points] + [g for g, _ in guides] + [1]) * 1.1
    high = high if high > low else low + 1

    def px(t):
        return left + (t - x0) / (x1 - x0) * (width - left - 10)

    def py(v):
        return top + (1 - (v - low) / (high - low)) * (height - top - bottom)

    parts = [f'<svg class="chart {css}" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<line class="frame" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>',
             f'<line class="frame" x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}"/>']
    for value in (low, (low + high) / 2, high):
        parts.append(f'<text class="axis" x="{left - 5}" y="{py(value) + 4:.1f}" text-anchor="end">{esc(label(value))}</text>')
    for value, name in guides:
        parts.append(f'<line class="guide" x1="{left}" y1="{py(value):.1f}" x2="{width - 10}" y2="{py(value):.1f}"/>'
                     f'<text class="axis" x="{width - 12}" y="{py(value) - 3:.1f}" text-anchor="end">{esc(name)}</text>')
    for t, anchor in ((x0, "start"), (x1, "end")):
        parts.append(f'<text class="axis" x="{px(t):.1f}" y="{height - 6}" text-anchor="{anchor}">'
                     f'{datetime.fromtimestamp(t):%Y-%m-%d}</text>')
    path = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in points)
    parts.append(f'<polyline class="line" points="{path}"/>')
    parts += [f'<circle class="point" cx="{px(t):.1f}" cy="{py(v):.1f}" r="2.5"><title>'
              f'{datetime.fromtimestamp(t):%Y-%m-%d %H:%M}: {esc(label(v))}</title></circle>' for t, v in points]
    if overlay:
        parts.append(overlay(px, py))
    parts.append("</svg>")
    return "".join(parts)


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else (f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h")


def usage_svg(dest: dict, series: list[tuple[float, float]]) -> str:
    """Used bytes over the forecast window, the fitted growth drawn ahead (dashed), and the warn, 90% and full lines."""
    total, outlook = dest["total"], dest.get("forecast") or {}
    percent = outlook.get("percent", {"warn": 80, "critical": 90, "full": 100})
    guides = tuple((total * percent[k] / 100, f"{percent[k]:g}%") for k in ("warn", "critical", "full"))
    growth = outlook.get("growth_bytes_per_day")
    if not (growth and growth > 0 and series):
        return line_svg(series, human_size, "usage", high=total, guides=guides)
    start, used = series[-1]
    days = min(PROJECTION_DAYS, (total - used) / growth) if total > used else 0.0
    end = start + max(days, 1.0) * 86400

    def projection(px, py):
        return (f'<line class="projection" x1="{px(start):.1f}" y1="{py(used):.1f}" x2="{px(end):.1f}" '
                f'y2="{py(min(total, used + growth * max(days, 1.0))):.1f}"><title>at the current growth: '
                f'{esc(human_size(growth))} a day</title></line>')

    return line_svg(series, human_size, "usage", high=total, x_end=end, guides=guides, overlay=projection)


# --- the page --------------------------------------------------------------------------------
STATE_CLASS = {"OK": "ok", "LATE": "warn", "STALE": "bad", "MISSING": "bad", "FAILING": "bad"}
LEVEL_CLASS = {"ok": "ok", "warn": "warn", "critical": "bad", "unreachable": "bad", "missing": "bad"}


def render(config: Config, health: dict, views: list[TargetView], usage: dict, operations: list[dict],
           now: datetime, days: int) -> str:
    first, last = window_start(now, days).date(), now.date()
    sections = [_targets_html(views, first, last, days), _destinations_html(health, usage),
                _matrix_html(config, health), _operations_html(operations)]
    text = string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=esc(f"bak: backups of {socket.gethostname()}"), generated=esc(f"{now:%Y-%m-%d %H:%M}"),
        host=esc(socket.gethostname()), days=days, summary=esc(health["summary"]),
        summary_class="ok" if health["summary"].startswith("HEALTHY") else "bad", content="\n".join(sections))
    return text


def _targets_html(views: list[TargetView], first: date, last: date, days: int) -> str:
    start = datetime.combine(first, datetime.min.time())
    out = ['<section id="targets"><h2>Targets</h2>', _legend()]
    for view in views:
        entry, counts = view.health, _counts(view, start)
        state = entry.get("state", "?")
        policy = view.target.policy or "keep all"
        problems = "".join(f"<li>{esc(p)}</li>" for p in entry.get("problems", []))
        sizes = [(b.when.timestamp(), b.size) for b in view.backups]
        runs = [(when.timestamp(), seconds) for when, seconds in view.durations]
        out.append(
            f'<article class="target" data-target="{esc(view.target.name)}" data-backups="{counts["backups"]}">'
            f'<h3>{esc(view.target.name)} <span class="badge {STATE_CLASS.get(state, "bad")}">{esc(state)}</span> '
            f'<small>{esc(view.target.method)}, every {esc(_interval(view.target.interval))}, '
            f'policy {esc(policy)}</small></h3>'
            f'<p class="counts">{counts["backups"]} backups in the last {days} days: {counts["kept"]} kept and '
            f'{counts["to_prune"]} to be pruned under the current policy; {counts["verified"]} verified, '
            f'{counts["drilled"]} restore-drilled; {counts["failed_runs"]} failed runs.'
            + (f" {len(view.backups) - counts['backups']} older backups kept." if len(view.backups) > counts["backups"] else "")
            + "</p>" + (f'<ul class="problems">{problems}</ul>' if problems else "")
            + calendar_svg(view, first, last)
            + '<div class="charts"><figure><figcaption>size of each backup</figcaption>'
            + line_svg(sizes, human_size, "size") + "</figure>"
            + '<figure><figcaption>length of each successful run</figcaption>'
            + line_svg(runs, _seconds, "duration") + "</figure></div></article>")
    if not views:
        out.append("<p>No enabled target in the config.</p>")
    out.append("</section>")
    return "".join(out)


def _legend() -> str:
    items = [("backup kept", "kept under the policy"), ("backup prune", "to be pruned under the policy"),
             ("backup kept verified", "verified"), ("backup kept drilled", "restore drill passed"),
             ("failure", "failed run")]
    cells = []
    for classes, text in items:
        cap = '<rect class="cap" x="2" y="0" width="8" height="3"/>' if "drilled" in classes else ""
        cells.append(f'<span><svg width="12" height="16" viewBox="0 0 12 16" aria-hidden="true"><g class="sample {classes}">'
                     f'{cap}<rect x="2" y="4" width="8" height="12"/></g></svg> {esc(text)}</span>')
    return f'<p class="legend">{"".join(cells)}</p>'


def _interval(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:g} d" if hours >= 24 and hours % 24 == 0 else f"{hours:g} h"


def _destinations_html(health: dict, usage: dict) -> str:
    out = ['<section id="destinations"><h2>Destinations</h2>']
    for dest in health["destinations"]:
        level = dest["level"]
        head = (f'<h3>{esc(dest["destination"])} <span class="badge {LEVEL_CLASS.get(level, "bad")}">{esc(level)}</span> '
                f'<small>{esc(dest["kind"])} on {esc(dest["host"])}, {esc(dest.get("on", ""))}</small></h3>')
        if "used_percent" not in dest:
            out.append(f'<article class="destination" data-destination="{esc(dest["destination"])}">{head}'
                       f'<p class="problems">{esc(dest.get("error", ""))}</p></article>')
            continue
        outlook = forecast.outlook_text(dest.get("forecast"))
        growth = (dest.get("forecast") or {}).get("growth_bytes_per_day")
        said = (f"{esc(dest['destination'])}: {esc(outlook)} at the current growth ({esc(human_size(abs(growth)))} a day"
                f"{' less' if growth < 0 else ''})" if growth is not None else f"{esc(dest['destination'])}: {esc(outlook)}")
        out.append(f'<article class="destination" data-destination="{esc(dest["destination"])}">{head}'
                   f'<p><meter min="0" max="100" low="{dest.get("forecast", {}).get("percent", {}).get("warn", 80)}" '
                   f'high="90" optimum="0" value="{dest["used_percent"]}"></meter> {dest["used_percent"]}% used, '
                   f'{esc(human_size(dest["free"]))} free of {esc(human_size(dest["total"]))}</p>'
                   f'<p class="forecast">{said}.</p>{usage_svg(dest, usage.get(dest["destination"], []))}</article>')
    out.append("</section>")
    return "".join(out)


def _matrix_html(config: Config, health: dict) -> str:
    used = sorted({d for t in config.targets if t.enabled for d in t.destinations})
    offsite = {d for t in health["targets"] for d in t["copies"].get("offsite_destinations", [])}
    head = "".join(f"<th>{esc(d)}{' (off-site)' if d in offsite else ''}</th>" for d in used)
    rows = []
    for entry in health["targets"]:
        target = config.target(entry["target"])
        copies = entry["copies"]
        cells = "".join(
            '<td class="here" title="the newest backup is here">&#9679;</td>' if d in copies["destinations"] else
            ('<td class="gap" title="a destination of this target without its newest backup">&#9675;</td>'
             if d in target.destinations else "<td></td>") for d in used)
        verdict = "ok" if copies["ok"] else "missing"
        rows.append(f'<tr><th>{esc(entry["target"])}</th>{cells}<td>{copies["copies"]}</td><td>{copies["media_count"]}</td>'
                    f'<td>{copies["offsite"]}</td><td class="{"ok" if copies["ok"] else "bad"}">{verdict}</td></tr>')
    return ('<section id="rule-321"><h2>3-2-1</h2><p>Copies of each target\'s newest backup (the original counts as '
            'one), on how many media, and how many off-site.</p><table class="matrix"><thead><tr><th>target</th>'
            f'{head}<th>copies</th><th>media</th><th>off-site</th><th>3-2-1</th></tr></thead><tbody>{"".join(rows)}'
            "</tbody></table></section>")


def _operations_html(operations: list[dict]) -> str:
    rows = []
    for op in operations:
        started, took = _local(op["started_at"]), _length(op)
        length = _seconds(took) if took is not None else ""
        error = status.first_line(op["error_tail"]) if op["error_tail"] else ""
        rows.append(f'<tr class="{"ok" if op["status"] == "ok" else "bad"}"><td>{esc(f"{started:%Y-%m-%d %H:%M}" if started else "")}</td>'
                    f'<td>{esc(op["kind"])}</td><td>{esc(op["target"] or "")}</td><td>{esc(op["status"])}</td>'
                    f'<td>{esc(human_size(op["bytes"]))}</td><td>{esc(length)}</td><td>{esc(error)}</td></tr>')
    body = "".join(rows) or '<tr><td colspan="7">nothing journaled yet</td></tr>'
    return (f'<section id="operations"><h2>Last operations</h2><table class="operations"><thead><tr><th>started</th>'
            f'<th>kind</th><th>target</th><th>status</th><th>bytes</th><th>took</th><th>error</th></tr></thead>'
            f"<tbody>{body}</tbody></table></section>")
