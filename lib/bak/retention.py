"""Which backups a policy keeps: exactly Proxmox VE's / PBS's prune, so bak and vzdump never disagree.

Backups are walked newest first. Each rule (last, hourly, daily, weekly, monthly, yearly)
keeps the newest backup of each of its periods, skipping periods already holding a backup
kept by an earlier rule and backups already marked, until it has kept N periods; the other
backups of a period it kept are marked remove. Whatever no rule marked is removed.
Protected backups are kept and count for no rule. A policy with no positive option keeps all.

Pure: no I/O, no clock. Times are the naive local times from the file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable, Mapping

RULES: list[tuple[str, str, Callable[[datetime], str]]] = [
    ("keep_last", "last", lambda t: t.isoformat()),
    ("keep_hourly", "hourly", lambda t: t.strftime("%Y-%m-%dT%H")),
    ("keep_daily", "daily", lambda t: t.strftime("%Y-%m-%d")),
    ("keep_weekly", "weekly", lambda t: "%04d-W%02d" % t.isocalendar()[:2]),
    ("keep_monthly", "monthly", lambda t: t.strftime("%Y-%m")),
    ("keep_yearly", "yearly", lambda t: t.strftime("%Y")),
]
KEEP_OPTIONS = [option for option, _, _ in RULES]


@dataclass(frozen=True)
class Candidate:
    name: str
    when: datetime
    protected: bool = False


@dataclass(frozen=True)
class Decision:
    name: str
    when: datetime
    keep: bool
    reason: str


def is_keep_everything(policy: Mapping[str, object] | None) -> bool:
    if not policy or policy.get("keep_all"):
        return True
    return not any(int(policy.get(option) or 0) > 0 for option in KEEP_OPTIONS)


def plan(candidates: Iterable[Candidate], policy: Mapping[str, object] | None) -> list[Decision]:
    """Decisions for one target's backups, newest first, each with its reason."""
    ordered = sorted(candidates, key=lambda c: (c.when, c.name), reverse=True)
    if is_keep_everything(policy):
        why = "keep-all" if policy and policy.get("keep_all") else "no keep option set: keep everything"
        return [Decision(c.name, c.when, True, "protected" if c.protected else why) for c in ordered]

    marks: dict[int, tuple[bool, str]] = {}
    for index, candidate in enumerate(ordered):
        if candidate.protected:
            marks[index] = (True, "protected")
    for option, label, period_of in RULES:
        count = int(policy.get(option) or 0)
        if count <= 0:
            continue
        already = {period_of(ordered[i].when) for i, (keep, reason) in marks.items() if keep and reason != "protected"}
        kept: dict[str, str] = {}
        for index, candidate in enumerate(ordered):
            if index in marks:
                continue
            period = period_of(candidate.when)
            if period in already:
                continue
            if period not in kept:
                if len(kept) >= count:
                    break
                kept[period] = candidate.name
                reason = f"{label} {len(kept)}" if label == "last" else f"{label} {period}"
                marks[index] = (True, reason)
            else:
                marks[index] = (False, f"{label} {period} is kept by {kept[period]}")
    return [Decision(c.name, c.when, *marks.get(i, (False, "outside the policy")))
            for i, c in enumerate(ordered)]


def keep_newest_good(decisions: list[Decision], good: Callable[[str], bool]) -> list[Decision]:
    """Safety over policy: never remove the newest backup that is known good."""
    for index, decision in enumerate(decisions):
        if good(decision.name):
            if not decision.keep:
                decisions = list(decisions)
                decisions[index] = Decision(decision.name, decision.when, True, "newest good backup (safety)")
            break
    return decisions
