"""When a destination fills up: a least-squares line through its used bytes over the last weeks.

The series needs no history of its own: the space used now is measured, and the catalogue and the
journal say when each byte bak wrote or freed came or went. Walking back from now, a backup still
there was absent before it was made, and a pruned backup was there between its making and its
prune. Whatever else shares the destination counts as flat.

Pure: no I/O, no clock. Times are seconds since the epoch.
"""

from __future__ import annotations

from typing import Iterable

DAY_S = 86400.0
WINDOW_S = 30 * DAY_S      # "the current growth": the last month, not the last year
MIN_POINTS = 3             # a line through two points is whatever those two say
MIN_SPAN_S = DAY_S         # a few hours of backups say nothing about weeks


def usage_series(used_now: float, now: float, events: Iterable[tuple[float, float]],
                 window_s: float = WINDOW_S) -> list[tuple[float, float]]:
    """(time, used bytes) just after each event of the window, then (now, used_now).

    `events`: (time, bytes) with bytes > 0 when they arrived (a backup made) and < 0 when they left
    (a backup pruned). The space used at t is the space used now less what arrived after t, plus
    what left after t. Events in the future (a wrong clock) are left out.
    """
    ordered = sorted((t, delta) for t, delta in events if t <= now)
    points, later = [], 0.0
    for when, delta in reversed(ordered):
        if when < now - window_s:
            break
        points.append((when, used_now - later))
        later += delta
    points.reverse()
    return [*points, (now, float(used_now))]


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares: (slope, intercept) of y = slope * x + intercept; None when all x are equal."""
    count = len(points)
    if count < 2:
        return None
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return slope, mean_y - slope * mean_x


def forecast(points: list[tuple[float, float]], total: float, thresholds: dict[str, float]) -> dict:
    """Days until the used space reaches each threshold (percent of `total`) at the fitted growth,
    counted from the last point (the space used now).

    A threshold already reached is 0 days away; one the space is not growing toward is None, and so
    is every threshold when the series has too few points or spans too little time (growth is None).
    """
    span = points[-1][0] - points[0][0] if points else 0.0
    line = fit_line(points) if len(points) >= MIN_POINTS and span >= MIN_SPAN_S else None
    growth = line[0] * DAY_S if line else None
    growing = growth is not None and round(growth) > 0  # less than a byte a day is flat
    used_now = points[-1][1] if points else 0.0
    days: dict[str, float | None] = {}
    for name, percent in thresholds.items():
        limit = total * percent / 100.0
        if total > 0 and used_now >= limit:
            days[name] = 0.0
        elif not growing or total <= 0:
            days[name] = None
        else:
            days[name] = round((limit - used_now) / growth, 1)
    return {"growth_bytes_per_day": None if growth is None else round(growth), "points": len(points),
            "span_days": round(span / DAY_S, 2), "percent": dict(thresholds), "days_to": days}


def days_text(days: float) -> str:
    if days < 1:
        return "<1 day"
    if days > 3650:
        return ">10 years"
    return f"~{days:.0f} days"


def outlook_text(outlook: dict | None) -> str:
    """One line for people: the next threshold the space grows toward, and when it will be full."""
    if not outlook or outlook["growth_bytes_per_day"] is None:
        return "too little history"
    days = outlook["days_to"]
    labels = {key: "full" if percent >= 100 else f"{percent:g}%" for key, percent in outlook["percent"].items()}
    ahead = {key: days[key] for key in labels if days[key] != 0}  # thresholds not reached yet
    if not ahead:
        return "full"
    coming = {key: value for key, value in ahead.items() if value is not None}
    if not coming:
        return "not growing"
    nearest = min(coming, key=coming.get)
    text = f"{labels[nearest]} in {days_text(coming[nearest])}"
    return text if nearest == "full" else text + f", full in {days_text(coming['full'])}"
