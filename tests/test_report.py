"""bak report --html: one self-contained file, opened by a real browser (Debian's headless Chromium) with no
network at all, that renders without a console error and whose calendars show the lab's known history.

Chromium runs in a network namespace of its own (`unshare -rn`: a loopback, down) and is driven over the
DevTools protocol on a pipe (--remote-debugging-pipe), so not even the protocol needs a socket. The
screenshot is kept in tests/artifacts/.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bak import naming
from bak.journal import Journal
from conftest import REPO, SESSION_TMP, need, run_cli, write_config

ARTIFACTS = REPO / "tests" / "artifacts"
APP_DAYS = 21  # app: one backup a day for three weeks, on two destinations
WIKI_DAYS = 5


def dump(folder, db, when, size):
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    name = naming.pg_dump_name(db, when)
    (folder / name).write_bytes(data)
    (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    return name


def journal_row(kind, target, status, started, seconds=1, details=None, error=None):
    journal = Journal.default()
    op = journal.start(kind, target, details)
    journal.finish(op, status, error_tail=error, bytes_=1000)
    utc = started.astimezone(timezone.utc)
    journal.db.execute("UPDATE operations SET started_at = ?, ended_at = ? WHERE id = ?",
                       (utc.isoformat(timespec="seconds"), (utc + timedelta(seconds=seconds)).isoformat(timespec="seconds"), op))
    journal.close()


@pytest.fixture
def history(bak_home):
    """A lab with a known history: app made a backup a day for 21 days (keep_last 3: 18 to prune), verified
    twice, drilled once, failed twice; wiki has 5 and keeps them all."""
    local, nfs = bak_home / "local", bak_home / "nfs"
    now = datetime.now().replace(microsecond=0)
    app = []
    for day in range(APP_DAYS):
        when = now - timedelta(days=day, hours=1)
        for root in (local, nfs):
            name = dump(root / "postgresql" / "app", "app", when, 2000 + 100 * (APP_DAYS - day))
        app.append(name)
        journal_row("create", "app", "ok", when, seconds=30 + day)
    for day in range(WIKI_DAYS):
        dump(local / "postgresql" / "wiki", "wiki", now - timedelta(days=day, hours=2), 500)
    write_config(bak_home / "config.yaml", {
        "version": 1,
        "destinations": {"local": {"kind": "local", "path": str(local), "medium": "ssd"},
                         "nfs": {"kind": "local", "path": str(nfs), "medium": "nfs"}},
        "policies": {"three": {"keep_last": 3}},
        "targets": [{"name": "app", "method": "pg_dump", "destinations": ["local", "nfs"], "policy": "three",
                     "interval": "1d", "pg_dump": {"database": "app"}},
                    {"name": "wiki", "method": "pg_dump", "destinations": ["local"], "interval": "1d",
                     "pg_dump": {"database": "wiki"}}]})
    for name in app[:2]:
        journal_row("verify", "app", "ok", now - timedelta(minutes=30), details={"store": "local", "name": name})
    journal_row("drill", "app", "ok", now - timedelta(minutes=20), details={"store": "nfs", "name": app[0]})
    for day in (3, 10):
        journal_row("create", "app", "failed", now - timedelta(days=day, hours=5),
                    error="pg_not_ready: PostgreSQL at 127.0.0.1:5432 is not ready")
    return bak_home


def test_the_report_counts_the_known_history_and_fetches_nothing(history):
    path = history / "report.html"
    result = run_cli("report", "--html", str(path))
    assert result.code == 0, result.envelope
    counts = {t["target"]: t for t in result.envelope["result"]["targets"]}
    assert counts["app"] == {"target": "app", "backups": APP_DAYS, "kept": 3, "to_prune": APP_DAYS - 3, "verified": 2,
                             "drilled": 1, "failed_runs": 2}
    assert counts["wiki"]["backups"] == WIKI_DAYS and counts["wiki"]["kept"] == WIKI_DAYS
    page = path.read_text()
    assert result.envelope["result"]["bytes"] == len(page.encode())
    # Self-contained: no script, no stylesheet or font link, no URL anywhere, every link an anchor in the page.
    assert "<script" not in page and "<link" not in page and "url(" not in page and "@import" not in page
    assert not re.search(r"(?i)\b(https?|ftp|wss?)://", page)
    assert all(ref.startswith("#") for ref in re.findall(r'(?:href|src)="([^"]*)"', page))
    assert "default-src 'none'" in page


def test_report_default_path_is_in_the_state_folder(history):
    result = run_cli("report")
    assert result.envelope["result"]["path"] == str(history / "state" / "report.html")
    assert Path(result.envelope["result"]["path"]).stat().st_size == result.envelope["result"]["bytes"]


class Chromium:
    """Headless Chromium over the DevTools protocol on a pipe: JSON messages ending with a NUL byte."""

    def __init__(self, tmp_path: Path):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        home = tmp_path / "chromium-home"
        home.mkdir()
        # Its singleton socket goes in TMPDIR, and a socket's path has at most 107 bytes: a short folder.
        self.short_tmp = Path(tempfile.mkdtemp(dir=SESSION_TMP))
        env = {**os.environ, "HOME": str(home), "TMPDIR": str(self.short_tmp), "XDG_CONFIG_HOME": str(home / "config"),
               "XDG_CACHE_HOME": str(home / "cache"), "XDG_DATA_HOME": str(home / "data")}
        argv = ["unshare", "-rn", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-breakpad", "--disable-crash-reporter",
                "--disable-dev-shm-usage", f"--user-data-dir={home / 'profile'}", "--remote-debugging-pipe",
                "--window-size=1280,900", "about:blank"]
        # fds 3 and 4 are the protocol's pipe: a small exec wrapper puts our ends there (no preexec_fn).
        wrapper = "import os,sys; os.dup2(int(sys.argv[1]),3); os.dup2(int(sys.argv[2]),4); os.execvp(sys.argv[3], sys.argv[3:])"
        self.log = open(tmp_path / "chromium.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", wrapper, str(to_browser_read), str(from_browser_write), *argv],
                                     pass_fds=(to_browser_read, from_browser_write), env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer, self._next_id, self.events = b"", 0, []
        self.session = None

    def send(self, method: str, params: dict | None = None, *, session: bool = True, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no message from the browser")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe: {(self.log.name and Path(self.log.name).read_text()[-2000:])}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open_page(self) -> None:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def load(self, url: str) -> None:
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")
        self.send("Runtime.evaluate", {"expression": "1"})  # let events emitted during the load arrive

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, and browser log errors (failed loads, CSP violations)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + params["exceptionDetails"].get("text", ""))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append("log: " + params["entry"]["text"])
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result
        return result["result"]["value"]

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self.log.close()
        shutil.rmtree(self.short_tmp, ignore_errors=True)


@pytest.fixture
def chromium(tmp_path):
    need("chromium", "unshare")
    browser = Chromium(tmp_path)
    try:
        browser.open_page()
        yield browser
    finally:
        browser.close()


def test_chromium_renders_the_report_without_an_error_and_its_calendar_shows_the_history(history, chromium):
    path = history / "report.html"
    clock = time.monotonic()
    assert run_cli("report", "--html", str(path)).code == 0
    generated_s = time.monotonic() - clock
    clock = time.monotonic()
    chromium.load(path.as_uri())
    rendered_s = time.monotonic() - clock
    assert chromium.problems() == []
    assert chromium.requests() == [path.as_uri()]  # the page itself, nothing else
    app = '[data-target="app"] svg.calendar'
    count = lambda selector: chromium.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length")  # noqa: E731
    assert count(f"{app} .backup") == APP_DAYS
    assert count(f"{app} .backup.kept") == 3
    assert count(f"{app} .backup.prune") == APP_DAYS - 3
    assert count(f"{app} .backup.verified") == 2
    assert count(f"{app} .backup.drilled") == 1
    assert count(f"{app} .failure") == 2
    assert count('[data-target="wiki"] svg.calendar .backup.kept') == WIKI_DAYS
    assert chromium.evaluate('document.querySelector(\'[data-target="app"]\').dataset.backups') == str(APP_DAYS)
    # Drawn, not only present: the calendar has a size on the page, and every backup mark too.
    assert chromium.evaluate(f"document.querySelector({json.dumps(app)}).getBoundingClientRect().width") > 300
    assert chromium.evaluate(f"[...document.querySelectorAll({json.dumps(app + ' .backup rect:not(.cap)')})]"
                             ".every(r => r.getBoundingClientRect().height > 5)")
    text = chromium.evaluate("document.body.innerText")
    assert "21 backups in the last 31 days: 3 kept and 18 to be pruned" in text
    assert re.search(r"nfs: .* at the current growth", text) or "nfs: too little history" in text
    size = chromium.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    shot = chromium.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}})
    import base64

    ARTIFACTS.mkdir(exist_ok=True)
    picture = base64.b64decode(shot["data"])
    assert picture.startswith(b"\x89PNG") and len(picture) > 20_000
    (ARTIFACTS / "report.png").write_bytes(picture)
    (ARTIFACTS / "report.html").write_bytes(path.read_bytes())
    (ARTIFACTS / "report-timings.json").write_text(json.dumps(
        {"generated_s": round(generated_s, 3), "rendered_s": round(rendered_s, 3), "html_bytes": path.stat().st_size}))


def test_the_browser_check_does_see_errors_and_requests(chromium, tmp_path):
    """The detector itself: a page with a console error, an exception and an image from the network."""
    page = tmp_path / "broken.html"
    page.write_text('<img src="https://example.invalid/x.png"><script>console.error("boom"); null.x;</script>')
    chromium.load(page.as_uri())
    problems = chromium.problems()
    assert any("boom" in p for p in problems) and any(p.startswith("exception") for p in problems), problems
    assert "https://example.invalid/x.png" in chromium.requests()  # tried, and could not leave the namespace
