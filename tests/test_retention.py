"""Retention: hand-computed cases (PVE/PBS prune semantics) and properties."""

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bak.retention import KEEP_OPTIONS, Candidate, keep_newest_good, plan


def c(name, *when, protected=False):
    return Candidate(name, datetime(*when), protected)


def decided(candidates, policy):
    return [(d.name, d.keep, d.reason) for d in plan(candidates, policy)]


def test_several_backups_per_day_keep_the_newest_of_each_day():
    backups = [c("a", 2026, 11, 30, 12), c("b", 2026, 11, 30, 6), c("c", 2026, 11, 29, 18),
               c("d", 2026, 11, 29, 6), c("e", 2026, 11, 28, 10)]
    assert decided(backups, {"keep_daily": 2}) == [
        ("a", True, "daily 2026-11-30"),
        ("b", False, "daily 2026-11-30 is kept by a"),
        ("c", True, "daily 2026-11-29"),
        ("d", False, "daily 2026-11-29 is kept by c"),
        ("e", False, "outside the policy"),
    ]


def test_iso_week_boundary_uses_week_year_and_monday_start():
    # 2025-12-29 (Mon) .. 2026-01-04 (Sun) is ISO week 2026-W01; 2025-12-28 (Sun) is 2025-W52.
    backups = [c("jan05", 2026, 1, 5, 1), c("jan04", 2026, 1, 4, 1), c("dec29", 2025, 12, 29, 1),
               c("dec28", 2025, 12, 28, 1)]
    assert decided(backups, {"keep_weekly": 3}) == [
        ("jan05", True, "weekly 2026-W02"),
        ("jan04", True, "weekly 2026-W01"),
        ("dec29", False, "weekly 2026-W01 is kept by jan04"),
        ("dec28", True, "weekly 2025-W52"),
    ]
    # Calendar years, not ISO week-years, for the yearly rule.
    assert decided(backups, {"keep_yearly": 2}) == [
        ("jan05", True, "yearly 2026"),
        ("jan04", False, "yearly 2026 is kept by jan05"),
        ("dec29", True, "yearly 2025"),
        ("dec28", False, "yearly 2025 is kept by dec29"),
    ]


def test_identical_timestamps_are_one_keep_last_period():
    backups = [c("x1", 2026, 11, 30, 2), c("x2", 2026, 11, 30, 2), c("older", 2026, 11, 29, 2)]
    assert decided(backups, {"keep_last": 2}) == [
        ("x2", True, "last 1"),
        ("x1", False, "last 2026-11-30T02:00:00 is kept by x2"),
        ("older", True, "last 2"),
    ]


def test_protected_inside_the_kept_range_counts_for_no_rule():
    backups = [c("t3", 2026, 11, 30), c("t2", 2026, 11, 29, protected=True), c("t1", 2026, 11, 28), c("t0", 2026, 11, 27)]
    assert decided(backups, {"keep_last": 2}) == [
        ("t3", True, "last 1"), ("t2", True, "protected"), ("t1", True, "last 2"), ("t0", False, "outside the policy")]


def test_protected_outside_the_kept_range_survives():
    backups = [c("t3", 2026, 11, 30), c("t2", 2026, 11, 29), c("t1", 2026, 11, 28, protected=True)]
    assert decided(backups, {"keep_last": 1}) == [
        ("t3", True, "last 1"), ("t2", False, "outside the policy"), ("t1", True, "protected")]


def test_empty_policy_and_zero_options_keep_everything():
    backups = [c("a", 2026, 11, 30), c("b", 2026, 11, 29)]
    for policy in (None, {}, {"keep_daily": 0, "keep_last": 0}):
        assert all(keep for _, keep, _ in decided(backups, policy))
    assert decided(backups, {})[0][2] == "no keep option set: keep everything"


def test_keep_all_wins_over_other_options():
    backups = [c("a", 2026, 11, 30), c("b", 2026, 11, 29), c("p", 2026, 11, 28, protected=True)]
    assert decided(backups, {"keep_all": True, "keep_last": 1}) == [
        ("a", True, "keep-all"), ("b", True, "keep-all"), ("p", True, "protected")]


def test_hourly_alone():
    backups = [c("h1050", 2026, 11, 30, 10, 50), c("h1010", 2026, 11, 30, 10, 10), c("h0930", 2026, 11, 30, 9, 30),
               c("h0800", 2026, 11, 30, 8)]
    assert decided(backups, {"keep_hourly": 2}) == [
        ("h1050", True, "hourly 2026-11-30T10"), ("h1010", False, "hourly 2026-11-30T10 is kept by h1050"),
        ("h0930", True, "hourly 2026-11-30T09"), ("h0800", False, "outside the policy")]


def test_monthly_alone():
    backups = [c("nov30", 2026, 11, 30), c("nov01", 2026, 11, 1), c("oct15", 2026, 10, 15), c("sep01", 2026, 9, 1)]
    assert decided(backups, {"keep_monthly": 2}) == [
        ("nov30", True, "monthly 2026-11"), ("nov01", False, "monthly 2026-11 is kept by nov30"),
        ("oct15", True, "monthly 2026-10"), ("sep01", False, "outside the policy")]


def test_rules_combined_skip_periods_already_kept_by_earlier_rules():
    backups = [c("mon30-12", 2026, 11, 30, 12), c("mon30-08", 2026, 11, 30, 8), c("sun29", 2026, 11, 29, 20),
               c("sat28", 2026, 11, 28, 20), c("sun22", 2026, 11, 22, 20), c("sun15", 2026, 11, 15, 20),
               c("sun08", 2026, 11, 8, 20)]
    assert decided(backups, {"keep_last": 1, "keep_daily": 2, "keep_weekly": 2}) == [
        ("mon30-12", True, "last 1"),
        ("mon30-08", False, "outside the policy"),
        ("sun29", True, "daily 2026-11-29"),
        ("sat28", True, "daily 2026-11-28"),
        ("sun22", True, "weekly 2026-W47"),
        ("sun15", True, "weekly 2026-W46"),
        ("sun08", False, "outside the policy"),
    ]


def test_spec_standard_policy_over_400_days_of_6_hourly_dumps():
    start = datetime(2026, 11, 30, 18)
    backups = [Candidate(f"b{i}", start - timedelta(hours=6 * i)) for i in range(4 * 400)]
    kept = [d for d in plan(backups, {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2}) if d.keep]
    # 7 days, then 4 older weeks, then the months and years not yet covered.
    assert [d.reason for d in kept[:7]] == [f"daily 2026-11-{day}" for day in range(30, 23, -1)]
    assert [d.reason for d in kept[7:11]] == ["weekly 2026-W47", "weekly 2026-W46", "weekly 2026-W45", "weekly 2026-W44"]
    assert kept[11].reason == "monthly 2026-10"
    assert len(kept) <= 7 + 4 + 12 + 2


def test_newest_good_backup_is_never_removed():
    decisions = plan([c("bad", 2026, 11, 30), c("good", 2026, 11, 29), c("old", 2026, 11, 28)], {"keep_last": 1})
    safe = keep_newest_good(decisions, good=lambda name: name != "bad")
    assert [(d.name, d.keep, d.reason) for d in safe] == [
        ("bad", True, "last 1"), ("good", True, "newest good backup (safety)"), ("old", False, "outside the policy")]


# --- properties ------------------------------------------------------------------------------
times = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31)).map(lambda t: t.replace(microsecond=0))
candidates = st.lists(st.tuples(times, st.booleans()), max_size=60).map(lambda rows: [Candidate(f"n{i}", when, protected) for i, (when, protected) in enumerate(rows)])
policies = st.fixed_dictionaries({}, optional={option: st.integers(0, 6) for option in KEEP_OPTIONS})


@settings(max_examples=300, deadline=None)
@given(candidates, policies)
def test_pruning_the_kept_set_again_removes_nothing(backups, policy):
    kept_names = {d.name for d in plan(backups, policy) if d.keep}
    again = plan([b for b in backups if b.name in kept_names], policy)
    assert all(d.keep for d in again)


@settings(max_examples=300, deadline=None)
@given(candidates, policies)
def test_the_newest_is_always_kept(backups, policy):
    decisions = plan(backups, policy)
    if decisions:
        assert decisions[0].keep


@settings(max_examples=300, deadline=None)
@given(candidates, policies)
def test_kept_count_is_bounded_by_the_policy(backups, policy):
    decisions = plan(backups, policy)
    if any(policy.get(o, 0) > 0 for o in KEEP_OPTIONS):
        protected = sum(b.protected for b in backups)
        assert sum(d.keep for d in decisions) <= sum(policy.values()) + protected
    assert {d.name for d in decisions} == {b.name for b in backups}
    assert all(d.keep for d in decisions if d.reason == "protected")
