#!/usr/bin/env python3
"""/bak-schedule: show, install or remove schedules (cron, systemd timers, Task Scheduler, git hook)."""
from _bak import run

run("schedule")
