"""SIGTERM (systemd stopping a timer's service, `kill PID`) ends a create or a sync as Ctrl-C does: one envelope
with code `interrupted`, exit 143, the scheduled run's fail ping and failure notification, no child left
running, and the next run starts clean (issue 30, item 11)."""

import http.server
import json
import os
import signal
import threading

import pytest

from conftest import bak_subprocess, run_cli, write_config
from test_safety import wait_for


def processes(cmdline_has: str = "", environ_has: str = "") -> list[int]:
    """Processes of this machine whose command line (and environment) hold these texts; one that ends while it
    is read is simply not there."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
            environ = b""
            if environ_has:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    environ = handle.read()
        except OSError:
            continue
        if cmdline_has.encode() in cmdline and environ_has.encode() in environ:
            found.append(int(pid))
    return found


class Monitor:
    """A healthchecks-style ping endpoint and a webhook, on loopback."""

    def __init__(self):
        self.calls = []
        calls = self.calls

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                calls.append((self.command, self.path, self.rfile.read(length).decode()))
                self.send_response(200)
                self.end_headers()

            do_GET = do_POST = _record

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def monitor():
    running = Monitor()
    yield running
    running.close()


def big_source(home, megabytes: int = 24):
    source = home / "src"
    source.mkdir()
    with open(source / "big.bin", "wb") as handle:
        handle.write(os.urandom(megabytes << 20))
    (source / "small.txt").write_text("small")
    return source


def stop_with_sigterm(proc, ready) -> tuple[int, dict | None, str]:
    try:
        wait_for(ready, timeout=60, what="the copy to be under way")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, (json.loads(out) if out.strip() else None), err.decode(errors="replace")


def test_sigterm_during_create_ends_like_ctrl_c_and_tells_the_monitor(bak_home, monitor):
    source = big_source(bak_home)
    dest = bak_home / "dest"
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"here": {"kind": "local", "path": str(dest)}},
        "targets": [{"name": "files", "method": "rsync", "destinations": ["here"],
                     "rsync": {"source": str(source), "bwlimit_kib": 2048}}],  # ~12 s: a window to stop it in
        "schedules": [{"name": "nightly", "targets": ["files"], "cron": "0 3 * * *", "ping_url": f"{monitor.url}/ping"}],
        "notify": {"webhook_url": f"{monitor.url}/hook", "events": ["failure"]}})
    proc = bak_subprocess("create", "--schedule", "nightly", "--json")
    folder = dest / "rsync" / "files"
    code, envelope, err = stop_with_sigterm(proc, lambda: list(folder.glob("*.partial")) and processes(str(folder)))
    assert code == 128 + signal.SIGTERM, err
    assert envelope is not None and envelope["errors"][0]["code"] == "interrupted", (envelope, err)
    assert "Traceback" not in err
    wait_for(lambda: not processes(str(folder)), timeout=10, what="no rsync left writing")
    paths = [(method, path) for method, path, _ in monitor.calls]
    assert paths == [("GET", "/ping/start"), ("POST", "/ping/fail"), ("POST", "/hook")], paths
    assert "interrupted" in monitor.calls[1][2] and json.loads(monitor.calls[2][2])["event"] == "failure"
    assert run_cli("log", "--target", "files").envelope["result"]["operations"][0]["status"] == "interrupted"
    again = run_cli("create")
    assert again.code == 0, again.envelope
    assert not list(folder.glob("*.partial")) and run_cli("verify").code == 0


def test_sigterm_during_sync_ends_with_an_envelope_and_leaves_no_restic(bak_home):
    source = big_source(bak_home, 32)
    password = bak_home / "restic.pass"
    password.write_text("restic password\n")
    password.chmod(0o600)
    data = {"version": 1, "destinations": {
                "here": {"kind": "local", "path": str(bak_home / "dest")},
                "offsite": {"kind": "restic", "repository": str(bak_home / "repo"), "password": {"file": str(password)},
                            "limit_upload_kib": 1024}},  # ~30 s: a window to stop it in
            "targets": [{"name": "files", "method": "rsync", "destinations": ["here"], "rsync": {"source": str(source)}}]}
    write_config(bak_home / "config.yaml", data)
    assert run_cli("create").code == 0
    data["targets"][0]["destinations"].append("offsite")  # a copy the repository lacks: sync's work
    write_config(bak_home / "config.yaml", data)
    assert run_cli("destination", "init", "offsite").code == 0
    proc = bak_subprocess("sync", "--to", "offsite", "--json")
    restic = lambda: processes("restic", f"RESTIC_REPOSITORY={bak_home / 'repo'}")  # noqa: E731
    code, envelope, err = stop_with_sigterm(proc, lambda: [pid for pid in restic() if pid != proc.pid])
    assert code == 128 + signal.SIGTERM, err
    assert envelope is not None and envelope["errors"][0]["code"] == "interrupted", (envelope, err)
    wait_for(lambda: not [pid for pid in restic() if pid != proc.pid], timeout=10, what="no restic left")
    del data["destinations"]["offsite"]["limit_upload_kib"]
    write_config(bak_home / "config.yaml", data)
    again = run_cli("sync", "--to", "offsite")
    assert again.code == 0, again.envelope
    assert again.envelope["result"]["copied"] == 1
