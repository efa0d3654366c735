"""bak feeds the homelab's monitoring: a node_exporter textfile read back by prometheus_client's own
parser, and Apprise notifications received by an HTTP server on loopback (Apprise's json:// posts there)."""

import hashlib
import json
import os
import re
import stat
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from bak import naming, watch
from bak.demo import free_port
from bak.journal import Journal
from bak.metrics import Family, escape_label, render
from conftest import need, run_cli, write_config


class Receiver:
    """What a notification service would get: each POST's path and JSON body. `status` is what it answers."""

    def __init__(self):
        self.posts: list[dict] = []
        self.status = 200
        self.arrived = threading.Event()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"


@pytest.fixture
def receiver():
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.posts.append({"path": self.path, "body": json.loads(body)})
            self.send_response(got.status)
            self.end_headers()
            got.arrived.set()

        def log_message(self, *args):
            pass

    got.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=got.server.serve_forever, daemon=True)
    thread.start()
    yield got
    got.server.shutdown()
    got.server.server_close()
    thread.join()


def dump(folder, db, when, data=b"PGDMP-data"):
    folder.mkdir(parents=True, exist_ok=True)
    name = naming.pg_dump_name(db, when)
    (folder / name).write_bytes(data)
    (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    return name


def journal_row(kind, target, status, started, seconds=1, details=None):
    """An operation as bak journals it, at a chosen time (UTC) and of a chosen length."""
    journal = Journal.default()
    op = journal.start(kind, target, details)
    journal.finish(op, status, error_tail=None if status == "ok" else f"{kind} went wrong")
    journal.db.execute("UPDATE operations SET started_at = ?, ended_at = ? WHERE id = ?",
                       (started.isoformat(timespec="seconds"),
                        (started + timedelta(seconds=seconds)).isoformat(timespec="seconds"), op))
    journal.close()


def parse(text):
    """{(sample name, frozen labels): value}, and the families' types, from prometheus_client's parser."""
    values, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values, types


def value(values, name, **labels):
    return values[(name, tuple(sorted(labels.items())))]


def test_the_textfile_holds_what_the_lab_knows(bak_home):
    now = datetime.now().replace(microsecond=0)
    store = bak_home / "store"
    app_newest = now - timedelta(hours=2)
    drilled = now - timedelta(hours=26)
    for when in (now - timedelta(hours=50), drilled, app_newest):
        dump(store / "postgresql" / "app", "app", when, data=b"x" * 1234)
    dump(store / "postgresql" / "old", "old", now - timedelta(days=3))
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"store": {"kind": "local", "path": str(store)}},
        "targets": [{"name": "app", "method": "pg_dump", "destinations": ["store"], "interval": "6h",
                     "pg_dump": {"database": "app"}},
                    {"name": "old", "method": "pg_dump", "destinations": ["store"], "interval": "1d",
                     "pg_dump": {"database": "old"}}]})
    utc = datetime.now(timezone.utc).replace(microsecond=0)
    journal_row("create", "app", "ok", utc - timedelta(hours=2), seconds=42)
    for hours in (30, 20, 10):
        journal_row("create", "old", "failed", utc - timedelta(hours=hours))
    journal_row("verify", "app", "ok", utc - timedelta(hours=1))
    journal_row("verify", "old", "failed", utc - timedelta(hours=1))
    journal_row("drill", "app", "ok", utc - timedelta(hours=3),
                details={"store": "store", "name": naming.pg_dump_name("app", drilled)})  # as a real drill records it
    journal_row("drill", "app", "failed", utc - timedelta(minutes=30))
    folder = bak_home / "textfile"
    folder.mkdir()

    result = run_cli("metrics", "--textfile", str(folder))
    assert result.code == 0, result.envelope
    path = folder / "bak.prom"
    assert result.envelope["result"]["path"] == str(path)
    assert sorted(os.listdir(folder)) == ["bak.prom"]  # the temp file was renamed, nothing else is left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter runs as another user
    text = path.read_text()
    assert text == result.envelope["result"]["text"]
    values, types = parse(text)

    assert value(values, "bak_newest_backup_timestamp_seconds", target="app") == app_newest.timestamp()
    assert value(values, "bak_newest_backup_age_seconds", target="app") == pytest.approx(7200, abs=120)
    assert value(values, "bak_backup_size_bytes", target="app") == 1234
    assert value(values, "bak_last_success_timestamp_seconds", target="app") == \
        (utc - timedelta(hours=2) + timedelta(seconds=42)).timestamp()
    assert value(values, "bak_last_create_duration_seconds", target="app") == 42
    assert value(values, "bak_create_last_success", target="app") == 1
    assert value(values, "bak_create_last_success", target="old") == 0
    assert value(values, "bak_create_failures_total", target="old") == 3
    assert value(values, "bak_create_failures_total", target="app") == 0
    assert types["bak_create_failures"] == "counter"  # the parser names a counter's family without _total
    assert value(values, "bak_verify_last_success", target="app") == 1
    assert value(values, "bak_verify_last_success", target="old") == 0
    assert value(values, "bak_drill_last_success", target="app") == 0  # the newest drill failed ...
    # ... but the one before passed on the backup made 26 hours ago: that is what a restore is proven to give back.
    assert value(values, "bak_proven_rpo_seconds", target="app") == pytest.approx(26 * 3600, abs=120)
    assert ("bak_proven_rpo_seconds", (("target", "old"),)) not in values
    assert value(values, "bak_target_state", target="app", state="OK") == 1
    assert value(values, "bak_target_state", target="old", state="FAILING") == 1
    assert sum(value(values, "bak_target_state", target="old", state=s)
               for s in ("OK", "LATE", "STALE", "MISSING", "FAILING")) == 1
    disk = os.statvfs(store)
    assert value(values, "bak_destination_free_bytes", destination="store") == \
        pytest.approx(disk.f_bavail * disk.f_frsize, rel=0.01)
    assert value(values, "bak_destination_up", destination="store") == 1
    assert all(types[name] == "gauge" for name in types if name != "bak_create_failures")


def test_a_missing_textfile_folder_is_bad_input_and_without_one_the_metrics_are_printed(bak_home):
    write_config(bak_home / "config.yaml", {"version": 1, "destinations": {"d": {"kind": "local", "path": str(bak_home / "d")}},
                                            "targets": []})
    result = run_cli("metrics", "--textfile", str(bak_home / "absent"))
    assert result.code == 2 and result.envelope["errors"][0]["where"] == str(bak_home / "absent")
    printed = run_cli("metrics")
    assert printed.code == 0 and printed.envelope["result"]["path"] is None
    values, _ = parse(printed.envelope["result"]["text"])
    assert ("bak_metrics_generated_timestamp_seconds", ()) in values


@settings(max_examples=300, deadline=None)
@given(labels=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30), min_size=1, max_size=5),
       help_text=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).map(str.strip).filter(bool))
def test_any_label_value_and_help_text_survive_the_exposition_format(labels, help_text):
    family = Family("bak_test_value", "gauge", help_text)  # (the parser strips a HELP's ends: ours have none)
    for number, label in enumerate(labels):
        family.add(number, target=label, position=str(number))
    parsed = list(text_string_to_metric_families(render([family])))
    assert len(parsed) == 1 and parsed[0].documentation == help_text
    assert [(s.labels["target"], s.value) for s in parsed[0].samples] == [(l, n) for n, l in enumerate(labels)]


def test_escaping_is_the_formats_own():
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def lab_with_a_broken_target(bak_home, notify):
    need("rsync")
    (bak_home / "src").mkdir()
    (bak_home / "src" / "notes.md").write_text("# notes\n")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"here": {"kind": "local", "path": str(bak_home / "dest")}},
        "targets": [{"name": "files", "method": "rsync", "destinations": ["here"], "interval": "1d",
                     "rsync": {"source": str(bak_home / "src")}},
                    {"name": "broken", "method": "rsync", "destinations": ["here"], "interval": "1d",
                     "rsync": {"source": str(bak_home / "gone")}}],
        "notify": notify})


def test_a_failed_create_is_notified_through_apprise_and_the_metrics_follow(bak_home, receiver):
    folder = bak_home / "textfile"
    folder.mkdir()
    lab_with_a_broken_target(bak_home, {"apprise_urls": [receiver.url("bak")], "events": ["failure"],
                                        "prometheus_textfile_dir": str(folder)})
    result = run_cli("create")
    assert result.code == 1
    assert result.envelope["warnings"] == []  # the notifier worked
    assert len(receiver.posts) == 1
    post = receiver.posts[0]
    assert post["path"] == "/bak"
    assert post["body"]["type"] == "failure"
    assert post["body"]["title"].startswith("bak: backup of broken failed on ")
    assert "rsync could not copy some files" in post["body"]["message"]  # the error's tail
    assert str(bak_home / "gone") in post["body"]["message"]
    values, _ = parse((folder / "bak.prom").read_text())  # refreshed by the create
    assert value(values, "bak_create_last_success", target="broken") == 0
    assert value(values, "bak_create_last_success", target="files") == 1
    assert value(values, "bak_create_failures_total", target="broken") == 1


def test_a_dead_notifier_is_a_warning_never_a_failed_backup(bak_home, receiver, monkeypatch):
    receiver.status = 500
    token = "s3cret-t0ken-in-the-path"
    monkeypatch.setenv("BAK_NTFY_URL", receiver.url(token))
    closed = free_port()  # nothing listens there
    lab_with_a_broken_target(bak_home, {"apprise_urls": [{"env": "BAK_NTFY_URL"}, f"json://127.0.0.1:{closed}/"],
                                        "events": ["success"]})
    result = run_cli("create", "--target", "files")
    assert result.code == 0, result.envelope
    assert len(receiver.posts) == 1 and receiver.posts[0]["body"]["type"] == "success"
    warnings = result.envelope["warnings"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("notification failed: notify.apprise_urls[0] (json://)")
    assert warnings[1].startswith("notification failed: notify.apprise_urls[1] (json://)")
    assert token not in result.stdout  # the secret URL's token is masked in everything shown


def test_a_stale_target_is_notified_once_a_day_while_it_lasts(bak_home, receiver):
    lab_with_a_broken_target(bak_home, {"apprise_urls": [receiver.url()], "events": ["stale"]})
    old = bak_home / "dest" / "rsync" / "files" / naming.rsync_name("files", datetime.now() - timedelta(days=5))
    old.mkdir(parents=True)
    old.with_name(old.name + ".manifest").write_text("")  # its checksum sidecar: a backup, not a stray folder
    run_cli("create", "--target", "broken")  # another target's run finds that files is stale ...
    assert [p["body"]["title"] for p in receiver.posts] == ["bak: files is stale"]  # (broken is FAILING: a failure)
    assert re.match(r"newest backup is 5\.\dd old \(interval 24\.0h\)", receiver.posts[0]["body"]["message"])
    run_cli("create", "--target", "broken")
    assert len(receiver.posts) == 1  # ... and the next run does not repeat it the same day
    assert set(json.loads((bak_home / "state" / watch.SENT_FILE).read_text())) == {"stale:files"}
    assert run_cli("create", "--target", "files").code == 0  # fixed: forgotten, so its return is news again
    assert json.loads((bak_home / "state" / watch.SENT_FILE).read_text()) == {}


def test_space_warnings_and_filling_destinations_are_alerts():
    health = {"targets": [], "destinations": [
        {"destination": "nfs", "kind": "ssh", "host": "store", "level": "warn", "used_percent": 82.0, "free": 10 << 30,
         "forecast": None},
        {"destination": "usb", "kind": "local", "host": "local", "level": "ok", "used_percent": 70.0, "free": 30 << 30,
         "forecast": {"growth_bytes_per_day": 3 << 30, "points": 9, "span_days": 8, "days_to":
                      {"warn": 3.3, "critical": 6.7, "full": 10.0}, "percent": {"warn": 80, "critical": 90, "full": 100}}},
        {"destination": "far", "kind": "local", "host": "local", "level": "ok", "used_percent": 10.0, "free": 90 << 30,
         "forecast": {"growth_bytes_per_day": 1 << 20, "points": 9, "span_days": 8, "days_to":
                      {"warn": 900.0, "critical": 1000.0, "full": 1200.0}, "percent": {"warn": 80, "critical": 90, "full": 100}}},
        {"destination": "gone", "kind": "ssh", "host": "x", "level": "unreachable", "error": "refused"}]}
    found = watch.alerts(health, ["space"])
    assert sorted(found) == ["space:nfs", "space:usb"]
    assert found["space:nfs"][1] == "bak: nfs is 82.0% full"
    assert found["space:usb"][1] == "bak: usb will be 90% full in ~7 days"
    assert "80% in ~3 days, full in ~10 days" in found["space:usb"][2]
    assert watch.alerts(health, ["stale"]) == {}


def test_a_failed_verify_is_notified_with_its_error(bak_home, receiver):
    lab_with_a_broken_target(bak_home, {"apprise_urls": [receiver.url()], "events": ["verify_failed"]})
    assert run_cli("create", "--target", "files").code == 0
    snapshot = next((bak_home / "dest" / "rsync" / "files").glob("rsync-files-*[0-9]"))
    (snapshot / "notes.md").write_text("# changed behind bak's back\n")
    result = run_cli("verify", "--target", "files")
    assert result.code == 1
    assert len(receiver.posts) == 1
    body = receiver.posts[0]["body"]
    assert body["type"] == "failure" and body["title"].startswith("bak: verify failed for files on ")
    assert "notes.md" in body["message"]
