"""Schedules (cron, systemd, Task Scheduler, git hook) and monitoring pings against a local HTTP server."""

import http.server
import json
import subprocess
import threading
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest
from croniter import croniter

from bak import schedule
from bak.config import from_data
from conftest import need, run_cli, write_config


def base_config(home, source, **extra):
    data = {"version": 1, "destinations": {"d": {"kind": "local", "path": str(home / "dest")}},
            "targets": [{"name": "files", "method": "rsync", "destinations": ["d"], "rsync": {"source": str(source)}}],
            "schedules": [{"name": "files-daily", "targets": ["files"], "cron": "30 2 * * *", "backend": "cron"},
                          {"name": "files-6h", "targets": ["files"], "cron": "0 */6 * * *", "backend": "systemd"},
                          {"name": "files-weekly", "targets": ["files"], "cron": "0 3 * * 0", "backend": "windows"}]}
    data.update(extra)
    write_config(home / "config.yaml", data)
    return data


def test_cron_lines_parse_and_give_the_expected_next_runs(bak_home):
    config = from_data(base_config(bak_home, bak_home))
    lines = schedule.cron_lines(schedule.jobs(config), "/etc/bak/config.yaml", "/var/log/bak")
    assert len(lines) == 3
    for line in lines:
        expression = " ".join(line.split()[:5])
        assert croniter.is_valid(expression)
        assert "-m bak create --schedule" in line and "--config /etc/bak/config.yaml" in line
    start = datetime(2026, 11, 30, 5, 0)
    six = croniter("0 */6 * * *", start)
    assert [six.get_next(datetime) for _ in range(3)] == [datetime(2026, 11, 30, 6), datetime(2026, 11, 30, 12),
                                                        datetime(2026, 11, 30, 18)]
    assert schedule.cron_for_interval(6 * 3600) == "0 */6 * * *"
    assert schedule.cron_for_interval(86400) == "0 2 * * *"
    assert schedule.cron_for_interval(7 * 86400) == "0 3 * * 0"


def test_install_into_a_crontab_twice_is_once_and_remove_keeps_foreign_lines(bak_home):
    base_config(bak_home, bak_home)
    crontab = bak_home / "crontab"
    crontab.write_text("MAILTO=root\n15 4 * * * /usr/local/bin/other-job\n")
    dry = run_cli("schedule", "install", "--dry-run", "--crontab-file", str(crontab), "--unit-dir", str(bak_home / "units"),
                  "--task-dir", str(bak_home / "tasks"))
    assert dry.code == 0, dry.envelope
    assert crontab.read_text() == "MAILTO=root\n15 4 * * * /usr/local/bin/other-job\n"
    planned = next(c for c in dry.envelope["result"]["changes"] if c["kind"] == "crontab")["content"]
    args = ["--crontab-file", str(crontab), "--unit-dir", str(bak_home / "units"), "--task-dir", str(bak_home / "tasks")]
    assert run_cli("schedule", "install", *args).code == 0
    once = crontab.read_text()
    assert once == planned and once.count(schedule.BEGIN) == 1 and "other-job" in once
    second = run_cli("schedule", "install", *args)
    assert crontab.read_text() == once
    assert not any(c["changed"] for c in second.envelope["result"]["changes"])
    assert run_cli("schedule", "remove", *args).code == 0
    assert crontab.read_text() == "MAILTO=root\n15 4 * * * /usr/local/bin/other-job\n"
    assert not list((bak_home / "units").iterdir()) and not list((bak_home / "tasks").iterdir())


def test_systemd_units_pass_systemd_analyze(bak_home):
    need("systemd-analyze")
    for cron, expected in [("0 */6 * * *", "*-*-* 0/6:0:00"), ("30 2 * * *", "*-*-* 2:30:00"),
                           ("0 3 * * 0", "Sun *-*-* 3:0:00"), ("0 1 * * 1-5", "Mon..Fri *-*-* 1:0:00"),
                           ("15,45 8 1 * *", "*-*-1 8:15,45:00")]:
        value = schedule.on_calendar(cron)
        assert value == expected
        out = subprocess.run(["systemd-analyze", "calendar", value], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    base_config(bak_home, bak_home)
    units = bak_home / "units"
    assert run_cli("schedule", "install", "--crontab-file", str(bak_home / "ct"), "--unit-dir", str(units),
                   "--task-dir", str(bak_home / "tasks")).code == 0
    names = sorted(p.name for p in units.iterdir())
    assert names == ["bak-files-6h.service", "bak-files-6h.timer"]
    out = subprocess.run(["systemd-analyze", "verify", *(str(units / n) for n in names)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "OnCalendar=*-*-* 0/6:0:00" in (units / "bak-files-6h.timer").read_text()


def test_task_scheduler_xml_is_well_formed_with_the_right_triggers(bak_home):
    config = from_data(base_config(bak_home, bak_home))
    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    weekly = next(j for j in schedule.jobs(config) if j.name == "files-weekly")
    root = ET.fromstring(schedule.task_xml(weekly, "C:\\bak\\config.yaml").encode("utf-16"))
    triggers = root.findall("t:Triggers/t:CalendarTrigger", ns)
    assert len(triggers) == 1
    assert triggers[0].find("t:StartBoundary", ns).text.endswith("T03:00:00")
    assert triggers[0].find("t:ScheduleByWeek/t:DaysOfWeek/t:Sunday", ns) is not None
    six = schedule.Job("six", ("files",), "0 */6 * * *", False, "windows")
    root = ET.fromstring(schedule.task_xml(six, "C:\\bak\\config.yaml").encode("utf-16"))
    starts = [t.find("t:StartBoundary", ns).text[-8:] for t in root.findall("t:Triggers/t:CalendarTrigger", ns)]
    assert starts == ["00:00:00", "06:00:00", "12:00:00", "18:00:00"]
    assert root.find("t:Actions/t:Exec/t:Arguments", ns).text.startswith("-m bak create --schedule six")
    assert schedule.schtasks_command(six, "C:\\t\\bak-six.xml") == ["schtasks", "/Create", "/XML", "C:\\t\\bak-six.xml",
                                                                    "/TN", "bak\\six", "/F"]


def test_vault_on_commit_installs_a_post_commit_hook_idempotently(bak_home):
    need("git")
    repo = bak_home / "vault"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    hook = repo / ".git" / "hooks" / "post-commit"
    hook.write_text("#!/bin/sh\necho mine\n")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"d": {"kind": "local", "path": str(bak_home / "dest")}},
        "targets": [{"name": "vault", "method": "vault", "destinations": ["d"], "vault": {"path": str(repo)}}],
        "schedules": [{"name": "vault-commit", "targets": ["vault"], "on_commit": True}]})
    args = ["--crontab-file", str(bak_home / "ct"), "--unit-dir", str(bak_home / "u"), "--task-dir", str(bak_home / "t")]
    assert run_cli("schedule", "install", *args).code == 0
    once = hook.read_text()
    assert once.startswith("#!/bin/sh\necho mine\n") and "create --schedule vault-commit" in once
    assert hook.stat().st_mode & 0o111
    run_cli("schedule", "install", *args)
    assert hook.read_text() == once
    run_cli("schedule", "remove", *args)
    assert hook.read_text() == "#!/bin/sh\necho mine\n"


class Recorder(http.server.BaseHTTPRequestHandler):
    calls: list = []

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        Recorder.calls.append((self.command, self.path, self.rfile.read(length).decode()))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    do_GET = do_POST = _record

    def log_message(self, *args):
        pass


@pytest.fixture
def monitor():
    Recorder.calls = []
    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", Recorder.calls
    server.shutdown()


def test_pings_start_success_and_failure_with_tail_and_a_webhook(bak_home, monitor):
    url, calls = monitor
    source = bak_home / "src"
    source.mkdir()
    (source / "a.txt").write_text("a")
    base_config(bak_home, source, notify={"webhook_url": f"{url}/hook", "events": ["failure"]})
    data = json.loads(json.dumps(base_config(bak_home, source, notify={"webhook_url": f"{url}/hook", "events": ["failure"]})))
    data["schedules"][0]["ping_url"] = f"{url}/ping/abc"
    write_config(bak_home / "config.yaml", data)
    ok = run_cli("create", "--schedule", "files-daily")
    assert ok.code == 0, ok.envelope
    assert [(m, p) for m, p, _ in calls] == [("GET", "/ping/abc/start"), ("GET", "/ping/abc")]
    calls.clear()
    data["targets"][0]["rsync"]["source"] = str(bak_home / "missing")
    write_config(bak_home / "config.yaml", data)
    failed = run_cli("create", "--schedule", "files-daily")
    assert failed.code == 1
    assert [(m, p) for m, p, _ in calls] == [("GET", "/ping/abc/start"), ("POST", "/ping/abc/fail"), ("POST", "/hook")]
    assert "rsync" in calls[1][2]
    hook = json.loads(calls[2][2])
    assert hook["event"] == "failure" and hook["source"] == "bak" and "files" in hook["summary"] + json.dumps(hook)


def test_an_unreachable_monitor_is_only_a_warning(bak_home):
    from conftest import free_port

    source = bak_home / "src"
    source.mkdir()
    data = base_config(bak_home, source)
    data["schedules"][0]["ping_url"] = f"http://127.0.0.1:{free_port()}/ping"
    write_config(bak_home / "config.yaml", data)
    result = run_cli("create", "--schedule", "files-daily")
    assert result.code == 0
    assert any("notification failed" in w for w in result.envelope["warnings"])
