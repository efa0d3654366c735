"""Space forecast: the least-squares line on synthetic growth series, the series walked back from the
catalogue and the journal, and status's forecast on a destination whose backups grow."""

import hashlib
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bak import naming
from bak.forecast import DAY_S, WINDOW_S, fit_line, forecast, outlook_text, usage_series
from conftest import run_cli, write_config

GIB = 1 << 30
THRESHOLDS = {"warn": 80, "critical": 90, "full": 100}


def daily(values, start=0.0):
    return [(start + i * DAY_S, float(v)) for i, v in enumerate(values)]


def test_a_steady_growth_reaches_each_threshold_when_arithmetic_says():
    # 10 GiB disk, 5 GiB used, +0.1 GiB a day for ten days: 80% (8 GiB) is 3 GiB - 0.9 GiB away.
    points = daily([5 * GIB + i * GIB / 10 for i in range(10)])
    result = forecast(points, 10 * GIB, THRESHOLDS)
    assert result["growth_bytes_per_day"] == round(GIB / 10)
    assert result["days_to"] == {"warn": 21.0, "critical": 31.0, "full": 41.0}
    assert result["points"] == 10 and result["span_days"] == 9
    assert outlook_text(result) == "80% in ~21 days, full in ~41 days"


def test_flat_and_shrinking_space_never_fills():
    for values in ([4 * GIB] * 10, [6 * GIB - i * GIB / 10 for i in range(10)]):
        result = forecast(daily(values), 10 * GIB, THRESHOLDS)
        assert result["days_to"] == {"warn": None, "critical": None, "full": None}
        assert outlook_text(result) == "not growing"
    shrinking = forecast(daily([6 * GIB - i * GIB / 10 for i in range(10)]), 10 * GIB, THRESHOLDS)
    assert shrinking["growth_bytes_per_day"] == -round(GIB / 10)


def test_too_few_points_or_too_short_a_span_gives_no_growth():
    assert forecast([], 10 * GIB, THRESHOLDS)["growth_bytes_per_day"] is None
    assert forecast(daily([GIB, 2 * GIB]), 10 * GIB, THRESHOLDS)["growth_bytes_per_day"] is None
    hours = [(i * 3600.0, float(i * GIB)) for i in range(6)]  # steep, but over five hours only
    result = forecast(hours, 10 * GIB, THRESHOLDS)
    assert result["growth_bytes_per_day"] is None and result["days_to"]["full"] is None
    assert outlook_text(result) == "too little history"


def test_a_threshold_already_passed_is_zero_days_away():
    result = forecast(daily([8.5 * GIB + i * GIB / 100 for i in range(5)]), 10 * GIB, THRESHOLDS)
    assert result["days_to"]["warn"] == 0 and result["days_to"]["critical"] > 0
    assert outlook_text(result).startswith("90% in ")
    full = forecast(daily([10 * GIB] * 4), 10 * GIB, THRESHOLDS)
    assert full["days_to"] == {"warn": 0, "critical": 0, "full": 0} and outlook_text(full) == "full"


def test_the_series_walks_back_from_now_through_what_came_and_went():
    now = 100 * DAY_S
    events = [(now - 40 * DAY_S, 7.0),                      # before the window: no point, no effect
              (now - 3 * DAY_S, 10.0), (now - 2 * DAY_S, 20.0),  # two backups made
              (now - DAY_S, -5.0),                          # one pruned
              (now + DAY_S, 99.0)]                          # in the future (a wrong clock): left out
    assert usage_series(1000, now, events) == [
        (now - 3 * DAY_S, 985.0), (now - 2 * DAY_S, 1005.0), (now - DAY_S, 1000.0), (now, 1000.0)]


def test_retention_at_steady_state_is_flat():
    """A backup a day, and each day the oldest pruned: the space used does not grow, whatever the catalogue holds."""
    now, size = 60 * DAY_S, 3 * GIB
    events = []
    for day in range(60):
        made = day * DAY_S
        events.append((made, size))
        if day >= 7:
            events.append((made + 60, -size))  # a minute after each backup, the one of a week ago is pruned
    result = forecast(usage_series(20 * GIB, now, events), 100 * GIB, THRESHOLDS)
    assert abs(result["growth_bytes_per_day"]) < GIB / 100
    assert result["days_to"]["full"] is None or result["days_to"]["full"] > 3650


@settings(max_examples=200, deadline=None)
@given(start=st.floats(1e3, 1e12), slope=st.floats(1e3, 1e10), days=st.integers(3, 60),
       total=st.floats(1e12, 1e15))
def test_a_straight_line_is_found_exactly(start, slope, days, total):
    points = [(1.7e9 + i * DAY_S, start + slope * i) for i in range(days)]
    fitted = fit_line(points)
    assert fitted[0] * DAY_S == pytest.approx(slope, rel=1e-6)
    result = forecast(points, total, THRESHOLDS)
    used = points[-1][1]
    for name, percent in THRESHOLDS.items():
        expected = max(0.0, (total * percent / 100 - used) / slope)
        assert result["days_to"][name] == pytest.approx(expected, abs=0.06, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(0, 1e13), min_size=0, max_size=40), total=st.floats(1, 1e13),
       warn=st.integers(1, 99))
def test_days_never_shrink_as_the_threshold_rises_and_none_means_not_growing(values, total, warn):
    result = forecast(daily(values), total, {"warn": warn, "critical": 90, "full": 100})
    ordered = sorted(result["days_to"].items(), key=lambda kv: {"warn": warn, "critical": 90, "full": 100}[kv[0]])
    known = [days for _, days in ordered if days is not None]
    assert known == sorted(known)
    growth = result["growth_bytes_per_day"]
    if growth is None or growth <= 0:
        assert all(days in (None, 0) for days in result["days_to"].values())
    assert isinstance(outlook_text(result), str)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.floats(0, 100 * DAY_S), st.floats(-1e9, 1e9)), max_size=50),
       used=st.floats(0, 1e12))
def test_the_series_ends_on_the_space_used_now_and_keeps_time_order(events, used):
    now = 100 * DAY_S
    series = usage_series(used, now, events)
    assert series[-1] == (now, used)
    assert [t for t, _ in series] == sorted(t for t, _ in series)
    assert all(now - WINDOW_S <= t <= now for t, _ in series)
    assert len(series) == 1 + sum(1 for t, _ in events if now - WINDOW_S <= t <= now)


def test_status_shows_when_a_growing_destination_fills(bak_home, tiny_disk):
    """A 1 MiB tmpfs gaining a 50 KiB dump a day for ten days: status says when 80%, 90% and full come."""
    folder = tiny_disk / "postgresql" / "grow"
    folder.mkdir(parents=True)
    now = datetime.now().replace(microsecond=0)
    for day in range(10, 0, -1):
        data = bytes(50 * 1024)
        name = naming.pg_dump_name("grow", now - timedelta(days=day - 0.5))
        (folder / name).write_bytes(data)
        (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"tiny": {"kind": "local", "path": str(tiny_disk), "warn_percent": 80}},
        "targets": [{"name": "grow", "method": "pg_dump", "destinations": ["tiny"], "interval": "1d",
                     "pg_dump": {"database": "grow"}}]})
    row = run_cli("status").envelope["result"]["destinations"][0]
    outlook = row["forecast"]
    assert outlook["points"] == 11 and outlook["growth_bytes_per_day"] == pytest.approx(50 * 1024, rel=0.05)
    used = row["total"] - row["free"]
    for name, percent in (("warn", 80), ("critical", 90), ("full", 100)):
        expected = (row["total"] * percent / 100 - used) / (50 * 1024)
        assert outlook["days_to"][name] == pytest.approx(expected, abs=0.6)
