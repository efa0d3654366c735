"""Prometheus metrics for node_exporter's textfile collector: what status knows, plus the journal's
times, durations and failures, in the text exposition format.

A homelab already watches itself with Prometheus; bak feeds it instead of asking to be watched.
The file is written atomically, so node_exporter never reads half of it. Ages are exported with the
timestamps they come from: the file is only as fresh as its last write (`bak_metrics_generated_timestamp_seconds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bak.config import Config
from bak.errors import BadInput
from bak.journal import Journal
from bak.report import Outcome

TEXTFILE_NAME = "bak.prom"
STATES = ("OK", "LATE", "STALE", "MISSING", "FAILING")
FAILED = ("failed", "partial", "interrupted")


@dataclass
class Family:
    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value, **labels: str) -> None:
        if value is not None:
            self.samples.append((labels, float(value)))


def escape_label(value: str) -> str:
    """Label values per the exposition format: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)


def render(families: list[Family]) -> str:
    lines = []
    for family in families:
        lines += [f"# HELP {family.name} {escape_help(family.help)}", f"# TYPE {family.name} {family.kind}"]
        for labels, value in family.samples:
            inner = ",".join(f'{key}="{escape_label(text)}"' for key, text in labels.items())
            lines.append(f"{family.name}{{{inner}}} {number(value)}" if inner else f"{family.name} {number(value)}")
    return "\n".join(lines) + "\n"


def _epoch(text: str | None, naive_is_utc: bool = True) -> float | None:
    """A journal time (UTC) or a backup time (local, naive) in seconds since the epoch."""
    try:
        value = datetime.fromisoformat(text) if text else None
    except (TypeError, ValueError):
        return None
    if value is None:
        return None
    if value.tzinfo is None and naive_is_utc:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def collect(status_result: dict, journal: Journal, now: datetime) -> list[Family]:
    """Every family, from a `bak status` result and the journal; `now` is local and naive like backup times."""
    F = Family
    state = F("bak_target_state", "gauge", "1 for the target's current state (OK within its interval, LATE past it, "
              "STALE past twice it, MISSING no backup, FAILING its last run failed), 0 for the others.")
    newest = F("bak_newest_backup_timestamp_seconds", "gauge", "Creation time of the target's newest backup.")
    age = F("bak_newest_backup_age_seconds", "gauge", "Age of the newest backup when this file was written.")
    size = F("bak_backup_size_bytes", "gauge", "Size of the target's newest backup (what a restore gives back).")
    interval = F("bak_target_interval_seconds", "gauge", "Expected time between two backups of the target.")
    success = F("bak_last_success_timestamp_seconds", "gauge", "End of the target's last successful create.")
    duration = F("bak_last_create_duration_seconds", "gauge", "How long the target's last successful create took.")
    create_ok = F("bak_create_last_success", "gauge", "1 if the target's last create succeeded, 0 if not.")
    failures = F("bak_create_failures_total", "counter", "Creates that failed, partly failed or were interrupted.")
    verify_ok = F("bak_verify_last_success", "gauge", "1 if the target's last verify passed, 0 if it failed.")
    verify_at = F("bak_verify_last_timestamp_seconds", "gauge", "Start of the target's last verify.")
    drill_ok = F("bak_drill_last_success", "gauge", "1 if the target's last restore drill passed, 0 if it failed.")
    drill_at = F("bak_drill_last_timestamp_seconds", "gauge", "Start of the target's last restore drill.")
    rpo = F("bak_proven_rpo_seconds", "gauge", "Age, when this file was written, of the newest backup a restore "
            "drill passed on: the most data a restore proven to work would lose.")
    rule = F("bak_rule_321_met", "gauge", "1 if the newest backup meets 3-2-1 (3 copies, 2 media, 1 off-site).")
    up = F("bak_destination_up", "gauge", "1 if the destination could be read, 0 if not.")
    free = F("bak_destination_free_bytes", "gauge", "Free bytes on the destination's filesystem or storage.")
    total = F("bak_destination_size_bytes", "gauge", "Size of the destination's filesystem or storage.")
    written = F("bak_metrics_generated_timestamp_seconds", "gauge", "When bak wrote these metrics.")

    last_ok = journal.latest("create", status="ok")
    last_create = journal.latest("create")
    failed = journal.counts("create", FAILED)
    for entry in status_result["targets"]:
        name = entry["target"]
        for each in STATES:
            state.add(1 if entry["state"] == each else 0, target=name, state=each)
        interval.add(entry["interval_h"] * 3600, target=name)
        if entry.get("newest"):
            made = _epoch(entry["newest"]["when"], naive_is_utc=False)
            newest.add(made, target=name)
            age.add(entry["newest"]["age_h"] * 3600, target=name)
            size.add(entry["newest"]["size"], target=name)
        if name in last_ok:
            ended, started = _epoch(last_ok[name]["ended_at"]), _epoch(last_ok[name]["started_at"])
            success.add(ended, target=name)
            duration.add(ended - started if ended is not None and started is not None else None, target=name)
        if name in last_create:
            create_ok.add(last_create[name]["status"] == "ok", target=name)
        failures.add(failed.get(name, 0), target=name)
        for check, ok_family, at_family in (("last_verify", verify_ok, verify_at), ("last_drill", drill_ok, drill_at)):
            if entry.get(check):
                ok_family.add(entry[check]["status"] == "ok", target=name)
                at_family.add(_epoch(entry[check]["at"]), target=name)
        if entry.get("proven_rpo"):  # status's: the newest backup still there whose last drill passed
            rpo.add(max(0.0, (now - datetime.fromisoformat(entry["proven_rpo"]["when"])).total_seconds()), target=name)
        rule.add(entry["copies"]["ok"], target=name)
    for dest in status_result["destinations"]:
        reachable = dest["level"] != "unreachable"
        up.add(reachable, destination=dest["destination"])
        if reachable:
            free.add(dest.get("free"), destination=dest["destination"])
            total.add(dest.get("total"), destination=dest["destination"])
    written.add(now.timestamp())
    return [state, newest, age, size, interval, success, duration, create_ok, failures, verify_ok, verify_at,
            drill_ok, drill_at, rpo, rule, up, free, total, written]


def textfile_folder(config: Config, given: Path | None) -> Path | None:
    folder = given or config.notify.get("prometheus_textfile_dir")
    return Path(folder).expanduser() if folder else None


def families_from(health: dict, now: datetime) -> list[Family]:
    journal = Journal.default()
    try:
        return collect(health, journal, now)
    finally:
        journal.close()


def check_folder(folder: Path) -> None:
    """A real folder this user may write in, and no device, pipe or folder where bak.prom goes."""
    from bak.paths import output_file, output_folder

    try:
        output_folder(folder, str(folder))
    except BadInput as exc:
        exc.hint = "Give node_exporter's --collector.textfile.directory (e.g. /var/lib/node_exporter/textfile_collector)."
        raise
    output_file(folder / TEXTFILE_NAME, str(folder), force=True)


def publish(folder: Path, text: str) -> Path:
    """TEXTFILE_NAME in node_exporter's folder, replaced atomically."""
    from bak.paths import write_output

    check_folder(folder)
    path = folder / TEXTFILE_NAME
    write_output(path, text.encode(), str(folder))
    return path


def metrics(config: Config, textfile_dir: Path | None = None, now: datetime | None = None) -> Outcome:
    """The metrics as text; written to TEXTFILE_NAME in the textfile folder when one is given or configured."""
    from bak.status import status

    now = now or datetime.now()
    folder = textfile_folder(config, textfile_dir)
    if folder is not None:
        check_folder(folder)  # before the status run, not after
    health = status(config, now)
    families = families_from(health.result, now)
    text = render(families)
    path = publish(folder, text) if folder is not None else None
    outcome = Outcome({"path": str(path) if path else None, "families": len(families),
                       "samples": sum(len(f.samples) for f in families), "text": text})
    outcome.warnings.extend(f"{e['where']}: {e['message']}" for e in health.errors if e["code"] == "destination_unreachable")
    return outcome
