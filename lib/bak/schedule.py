"""Schedules: cron lines, systemd units, Windows Task Scheduler XML and the vault's post-commit hook.

Every job runs `bak create --schedule NAME` (lock, journal, pings, notification). bak owns only
what sits between its markers, so installing twice changes nothing and removing leaves the rest.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from bak.config import Config, Schedule
from bak.errors import BadInput

BEGIN = "# BEGIN bak (managed by `bak schedule`; edit the config, not these lines)"
END = "# END bak"
DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
WINDOWS_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


@dataclass(frozen=True)
class Job:
    name: str
    targets: tuple[str, ...]
    cron: str | None
    on_commit: bool
    backend: str


def jobs(config: Config) -> list[Job]:
    """The config's schedules, or one per enabled target derived from its interval."""
    if config.schedules:
        return [Job(s.name, s.targets, s.cron, s.on_commit, s.backend) for s in config.schedules]
    return [Job(f"target-{t.name}", (t.name,), cron_for_interval(t.interval.total_seconds()), False, "cron")
            for t in config.targets if t.enabled]


def cron_for_interval(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"*/{minutes} * * * *"
    if minutes < 24 * 60:
        return f"0 */{minutes // 60} * * *"
    if minutes % (7 * 24 * 60) == 0:
        return "0 3 * * 0"
    return f"0 2 */{minutes // (24 * 60)} * *" if minutes > 24 * 60 else "0 2 * * *"


def command(job: Job, config_path: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "bak", "create", "--schedule", job.name, "--config", config_path, "--json"]


# --- cron ----------------------------------------------------------------------------------------
def cron_lines(job_list: list[Job], config_path: str, log_dir: str) -> list[str]:
    lines = []
    for job in job_list:
        if job.cron:
            log = shlex.quote(f"{log_dir}/schedule-{job.name}.log")
            lines.append(f"{job.cron} {shlex.join(command(job, config_path))} >> {log} 2>&1")
    return lines


def merge_block(existing: str, lines: list[str]) -> str:
    """`existing` with bak's block replaced by `lines` (or removed when `lines` is empty)."""
    kept, inside = [], False
    for line in existing.splitlines():
        if line == BEGIN:
            inside = True
        elif line == END and inside:
            inside = False
        elif not inside:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = [BEGIN, *lines, END] if lines else []
    text = "\n".join(kept + ([""] if kept and block else []) + block)
    return text + "\n" if text else ""


# --- systemd -------------------------------------------------------------------------------------
def _field(value: str, names: list[str] | None = None) -> str:
    def one(part: str) -> str:
        if names is not None and part.isdigit():
            return names[int(part) % 7]
        return part

    out = []
    for part in value.split(","):
        if part == "*":
            return "*"
        if part.startswith("*/"):
            out.append(f"0/{part[2:]}" if names is None else part)
        elif "-" in part:
            low, high = part.split("-", 1)
            out.append(f"{one(low)}..{one(high)}")
        elif "/" in part:
            start, step = part.split("/", 1)
            out.append(f"{start}/{step}")
        else:
            out.append(one(part))
    return ",".join(out)


def on_calendar(cron: str) -> str:
    """A 5-field cron expression as a systemd OnCalendar value (local time, like cron)."""
    fields = cron.split()
    if len(fields) != 5:
        raise BadInput(f"cron {cron!r} needs 5 fields", where="schedules.cron")
    minute, hour, day, month, weekday = fields
    if any(re.search(r"[A-Za-z?LW#]", f) for f in fields[:4]):
        raise BadInput(f"cron {cron!r}: only numbers, *, ranges, lists and steps are supported", where="schedules.cron")
    days = "" if weekday == "*" else _field(weekday, DAYS) + " "
    if weekday.startswith("*/"):
        raise BadInput(f"cron {cron!r}: a step on the weekday has no systemd equivalent", where="schedules.cron")
    month_part = "*" if month == "*" else _field(month)
    day_part = "*" if day == "*" else _field(day)
    hour_part = "*" if hour == "*" else _field(hour)
    minute_part = "*" if minute == "*" else _field(minute)
    return f"{days}*-{month_part}-{day_part} {hour_part}:{minute_part}:00"


def systemd_units(job: Job, config_path: str) -> dict[str, str]:
    service = (f"[Unit]\nDescription=bak backup: {job.name} ({', '.join(job.targets)})\n"
               "After=network-online.target\nWants=network-online.target\n\n"
               f"[Service]\nType=oneshot\nExecStart={shlex.join(command(job, config_path))}\n"
               "Nice=10\nIOSchedulingClass=idle\n")
    timer = (f"[Unit]\nDescription=bak schedule {job.name}\n\n[Timer]\nOnCalendar={on_calendar(job.cron)}\n"
             "Persistent=true\nRandomizedDelaySec=60\n\n[Install]\nWantedBy=timers.target\n")
    return {f"bak-{job.name}.service": service, f"bak-{job.name}.timer": timer}


# --- Windows Task Scheduler ----------------------------------------------------------------------
def _number_list(value: str, low: int, high: int) -> list[int]:
    if value == "*":
        return list(range(low, high + 1))
    numbers = []
    for part in value.split(","):
        if part.startswith("*/"):
            numbers += list(range(low, high + 1, int(part[2:])))
        elif "-" in part:
            a, b = part.split("-", 1)
            numbers += list(range(int(a), int(b) + 1))
        else:
            numbers.append(int(part))
    return numbers


def task_xml(job: Job, config_path: str, python: str = "python") -> str:
    """Task Scheduler 1.2 XML: a calendar trigger per start time, repeated when the cron asks for it."""
    if job.on_commit or not job.cron:
        raise BadInput(f"schedule {job.name} has no time: on-commit jobs use the git hook", where="schedules")
    minute, hour, day, month, weekday = job.cron.split()
    if month != "*" or (day != "*" and not day.startswith("*/")):
        raise BadInput(f"cron {job.cron!r}: Task Scheduler export supports daily, every-N-days and weekly schedules",
                       where="schedules.cron")
    minutes = _number_list(minute, 0, 59)
    hours = _number_list(hour, 0, 23)
    triggers = []
    for h in hours:
        for m in minutes:
            start = f"2026-01-01T{h:02d}:{m:02d}:00"
            if weekday != "*":
                days = "".join(f"<{WINDOWS_DAYS[d % 7]} />" for d in _number_list(weekday, 0, 6))
                schedule = f"<ScheduleByWeek><DaysOfWeek>{days}</DaysOfWeek><WeeksInterval>1</WeeksInterval></ScheduleByWeek>"
            else:
                interval = int(day[2:]) if day.startswith("*/") else 1
                schedule = f"<ScheduleByDay><DaysInterval>{interval}</DaysInterval></ScheduleByDay>"
            triggers.append(f"    <CalendarTrigger><StartBoundary>{start}</StartBoundary><Enabled>true</Enabled>"
                            f"{schedule}</CalendarTrigger>")
    arguments = escape(shlex.join(command(job, config_path, python)[1:]).replace("'", '"'))
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo><Description>bak backup: {escape(job.name)} ({escape(', '.join(job.targets))})</Description></RegistrationInfo>
  <Triggers>
{chr(10).join(triggers)}
  </Triggers>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <StartWhenAvailable>true</StartWhenAvailable>
    <ExecutionTimeLimit>PT6H</ExecutionTimeLimit>
    <Enabled>true</Enabled>
  </Settings>
  <Actions Context="Author">
    <Exec><Command>{escape(python)}</Command><Arguments>{arguments}</Arguments></Exec>
  </Actions>
</Task>
"""


def schtasks_command(job: Job, xml_path: str) -> list[str]:
    return ["schtasks", "/Create", "/XML", xml_path, "/TN", f"bak\\{job.name}", "/F"]


# --- git post-commit hook --------------------------------------------------------------------------
def hook_block(job: Job, config_path: str) -> list[str]:
    """Runs in the background so a commit never waits for the backup."""
    return [f"{shlex.join(command(job, config_path))} >/dev/null 2>&1 &"]


def hook_text(existing: str, job: Job | None, config_path: str) -> str:
    lines = hook_block(job, config_path) if job else []
    body = existing if existing.startswith("#!") or not lines else "#!/bin/sh\n" + existing
    return merge_block(body, lines)


def schedule_for(config: Config, name: str) -> Schedule:
    for schedule in config.schedules:
        if schedule.name == name:
            return schedule
    raise BadInput(f"no schedule named {name!r}", where="--schedule",
                   hint="Known: " + (", ".join(s.name for s in config.schedules) or "none"))


def vault_paths(config: Config, job: Job) -> list[Path]:
    return [Path(t.options["path"]).expanduser() for t in config.select(job.targets) if t.method == "vault"]


# --- install / remove ----------------------------------------------------------------------------
def changes(config: Config, *, remove: bool, config_path: str, crontab_file: Path | None, unit_dir: Path,
            task_dir: Path, log_dir: str) -> tuple[list[dict], list[list[str]]]:
    """Every file bak would write or change, with its new content; plus commands to run by hand."""
    job_list = jobs(config)
    planned, commands = [], []
    cron_jobs = [j for j in job_list if j.backend == "cron" and j.cron]
    current = _read_crontab(crontab_file)
    wanted = merge_block(current, [] if remove else cron_lines(cron_jobs, config_path, log_dir))
    planned.append({"kind": "crontab", "path": str(crontab_file) if crontab_file else "user crontab",
                    "content": wanted, "changed": wanted != current})
    for job in (j for j in job_list if j.backend == "systemd" and j.cron):
        for unit, text in systemd_units(job, config_path).items():
            path = unit_dir / unit
            old = _read_existing(path)
            planned.append({"kind": "systemd", "path": str(path), "content": None if remove else text,
                            "changed": (old is not None) if remove else old != text})
        commands.append(["systemctl", "--user", "daemon-reload"])
        commands.append(["systemctl", "--user", "disable" if remove else "enable", "--now", f"bak-{job.name}.timer"])
    for job in (j for j in job_list if j.backend == "windows" and j.cron):
        path = task_dir / f"bak-{job.name}.xml"
        text = task_xml(job, config_path)
        old = _read_existing(path)
        planned.append({"kind": "windows", "path": str(path), "content": None if remove else text,
                        "changed": (old is not None) if remove else old != text})
        commands.append(["schtasks", "/Delete", "/TN", f"bak\\{job.name}", "/F"] if remove
                        else schtasks_command(job, str(path)))
    for job in (j for j in job_list if j.on_commit):
        for repo in vault_paths(config, job):
            hook = repo / ".git" / "hooks" / "post-commit"
            old = _read_existing(hook) or ""
            new = hook_text(old, None if remove else job, config_path)
            planned.append({"kind": "git-hook", "path": str(hook), "content": new, "changed": new != old})
    return planned, commands


EDITED_MAX = 4 << 20  # a crontab, a unit, a git hook: far smaller


def _read_existing(path: Path) -> str | None:
    """A file bak may replace: its text, None when absent; a device, pipe or folder there (a crontab file
    /dev/zero would be read forever, /dev/null replaced) is the caller's bad path."""
    from bak.errors import BadInput
    from bak.paths import output_file

    if not output_file(path, str(path), force=True, parents=True):
        return None
    hint = "Point it at a text file bak may write (or at a new one)."
    try:
        with open(path, "rb") as handle:
            data = handle.read(EDITED_MAX + 1)
        if len(data) > EDITED_MAX:
            raise BadInput(f"{path} holds more than {EDITED_MAX} bytes: not a file bak edits", where=str(path), hint=hint)
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BadInput(f"cannot use {path or '(empty path)'}: {reason}", where=str(path), hint=hint) from None


def _read_crontab(path: Path | None) -> str:
    if path is not None:
        return _read_existing(path) or ""
    from bak.run.local import LocalRunner

    runner = LocalRunner()
    if not runner.has_tool("crontab"):
        return ""  # no cron here: nothing of ours to keep or remove; installing cron lines will say so
    out = runner.run(["crontab", "-l"], check=False)
    return out.stdout_text if out.returncode == 0 else ""


def apply(planned: list[dict], crontab_file: Path | None) -> None:
    import os

    from bak.run.local import LocalRunner

    for change in planned:
        if not change["changed"]:
            continue
        path = Path(change["path"])
        if change["kind"] == "crontab" and crontab_file is None:
            LocalRunner().run(["crontab", "-"], stdin=change["content"].encode())
        elif change["content"] is None or change["content"].strip() in ("", "#!/bin/sh"):
            path.unlink(missing_ok=True)  # nothing but bak's block was there
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_text(change["content"])
            os.replace(partial, path)
            if change["kind"] == "git-hook":
                path.chmod(0o755)
