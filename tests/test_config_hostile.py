"""A config that says two things, or says a secret, is refused without repeating it (issue 30, items 4 and 7)."""

import pytest

from conftest import run_cli


def lab_text(home, extra: str = "") -> str:
    (home / "src").mkdir(exist_ok=True)
    return (f"version: 1\n"
            f"destinations:\n  here:\n    kind: local\n    path: {home / 'dest'}\n"
            f"targets:\n  - name: files\n    method: rsync\n    destinations: [here]\n"
            f"    rsync:\n      source: {home / 'src'}\n" + extra)


# --- duplicate keys (item 7) ---------------------------------------------------------------------
@pytest.mark.parametrize("text, key, lines", [
    # a stray second `targets: []` at the end would silently drop every target
    (lambda home: lab_text(home, "targets: []\n"), "targets", (6, 12)),
    # a doubled `path:` would send the backups elsewhere
    (lambda home: lab_text(home).replace("    kind: local\n", f"    kind: local\n    path: {home / 'other'}\n"),
     "path", (5, 6)),
])
def test_a_key_written_twice_is_refused_with_both_lines(bak_home, text, key, lines):
    (bak_home / "config.yaml").write_text(text(bak_home))
    for command in (["config", "check"], ["status"], ["create", "--dry-run"]):
        result = run_cli(*command)
        assert result.code == 2, (command, result.envelope)
        error = result.envelope["errors"][0]
        assert error["code"] == "config_invalid"
        assert f"key {key!r} appears twice" in error["message"]
        assert f"line {lines[0]} and on line {lines[1]}" in error["message"], error["message"]
        assert error["where"].endswith(f"config.yaml:{lines[1]}:{5 if key == 'path' else 1}"), error["where"]
    assert not (bak_home / "dest").exists() and not (bak_home / "other").exists()


def test_keys_that_yaml_reads_alike_are_duplicates_and_aliases_are_not(bak_home):
    (bak_home / "config.yaml").write_text(lab_text(bak_home, "notify:\n  events: [failure]\n  'events': [space]\n"))
    result = run_cli("config", "check")
    assert result.code == 2 and "'events' appears twice" in result.envelope["errors"][0]["message"]
    # one anchor used twice is one mapping read twice, not a key written twice
    text = lab_text(bak_home).replace("    rsync:\n", "    rsync: &opts\n") + \
        "  - name: again\n    method: rsync\n    destinations: [here]\n    rsync: *opts\n"
    (bak_home / "config.yaml").write_text(text)
    assert run_cli("config", "check").code == 0


def test_wizard_answers_with_a_key_written_twice_write_nothing(bak_home):
    answers = bak_home / "answers.yaml"
    answers.write_text(f"destinations:\n  local: {{kind: local, path: {bak_home / 'b'}}}\n"
                       f"folders:\n  - {{name: docs, source: {bak_home}}}\nfolders: []\n")
    result = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(bak_home / "out.yaml"))
    assert result.code == 2 and "'folders' appears twice" in result.envelope["errors"][0]["message"]
    assert not (bak_home / "out.yaml").exists()


# --- secrets written where a reference belongs (item 4) ------------------------------------------
SECRETS = ("hunter2PLAIN", "hunter3PLAIN", "hunter4PLAIN", "T0K3NSECRETx", "secretUUID123", "bottoken12345")


def secrets_config(home) -> str:
    return lab_text(home).replace("targets:\n", f"""\
  offsite:
    kind: restic
    repository: {home / 'repo'}
    password: hunter2PLAIN
  offsite2:
    kind: restic
    repository: {home / 'repo2'}
    password: {{env: BAK_X, value: hunter3PLAIN}}
  s3:
    kind: restic
    repository: s3:http://127.0.0.1:9/bucket
    aws_secret_access_key: {{file: ~/k, env: hunter4PLAIN}}
targets:
  - name: db
    method: pg_dump
    destinations: [here]
    pg_dump: {{database: app, password: hunter4PLAIN}}
""") + """\
schedules:
  - name: s
    targets: [db]
    cron: "0 * * * *"
    ping_url: "https://hc.example/ping/secretUUID123 x"
notify:
  webhook_url: "https://hooks.example/T0K3NSECRETx x"
  apprise_urls: ["tgram://bottoken12345/chat x", {file: "relative/bottoken12345"}]
"""


@pytest.mark.parametrize("command", [["config", "check"], ["status"], ["create"], ["list"]])
def test_a_secret_written_in_the_config_is_never_echoed(bak_home, command):
    (bak_home / "config.yaml").write_text(secrets_config(bak_home))
    result = run_cli(*command)
    assert result.code == 2
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr, secret
    errors = {e["where"]: e["message"] for e in result.envelope["errors"]}
    for where in ("destinations.offsite.password", "targets[0].pg_dump.password"):
        assert "never written in the config itself" in errors[where], errors
    assert "exactly one key" in errors["destinations.offsite2.password"]
    assert "not an http(s) URL" in errors["schedules[0].ping_url"]
    assert "not an http(s) URL" in errors["notify.webhook_url"]
    assert "not an Apprise URL" in errors["notify.apprise_urls[0]"]
    assert "unknown key 'value'" in errors["destinations.offsite2.password.value"]  # the key is named, not its value


@pytest.fixture
def refusing_port():
    """A loopback port nothing listens on."""
    from conftest import free_port

    return free_port()


def test_a_failed_ping_or_webhook_names_the_host_never_the_token(bak_home, refusing_port, monkeypatch):
    base = f"http://127.0.0.1:{refusing_port}"
    monkeypatch.setenv("BAK_TEST_PING", f"{base}/ping/pingTOKEN0123456")
    (bak_home / "hook.url").write_text(f"http://user:hookPASSWORD99@127.0.0.1:{refusing_port}/services/hookTOKEN98765?k=queryTOKEN4321\n")
    (bak_home / "hook.url").chmod(0o600)
    text = lab_text(bak_home).replace("    rsync:\n      source: ", "    rsync:\n      source: /nonexistent") + f"""\
schedules:
  - name: literal
    targets: [files]
    cron: "0 * * * *"
    ping_url: "{base}/ping/literalTOKEN777"
  - name: referenced
    targets: [files]
    cron: "0 * * * *"
    ping_url: {{env: BAK_TEST_PING}}
notify:
  webhook_url: {{file: {bak_home / 'hook.url'}}}
  events: [failure]
"""
    (bak_home / "config.yaml").write_text(text)
    for schedule in ("literal", "referenced"):
        result = run_cli("create", "--schedule", schedule)
        assert result.code == 1, result.envelope
        warnings = [w for w in result.envelope["warnings"] if w.startswith("notification failed")]
        assert len(warnings) == 3, result.envelope  # start and fail pings, the webhook
        assert all(f"http://127.0.0.1:{refusing_port}/..." in w for w in warnings), warnings
        for token in ("literalTOKEN777", "pingTOKEN0123456", "hookTOKEN98765", "queryTOKEN4321", "hookPASSWORD99"):
            assert token not in result.stdout + result.stderr, token


def test_a_ping_url_read_from_a_secret_reaches_its_monitor(bak_home, monkeypatch):
    import http.server
    import threading

    calls = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            calls.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("BAK_TEST_PING", f"http://127.0.0.1:{server.server_port}/ping/uuidTOKEN42")
        (bak_home / "config.yaml").write_text(lab_text(bak_home) + "schedules:\n  - name: s\n    targets: [files]\n"
                                              "    cron: '0 * * * *'\n    ping_url: {env: BAK_TEST_PING}\n")
        result = run_cli("create", "--schedule", "s")
        assert result.code == 0, result.envelope
        assert calls == ["/ping/uuidTOKEN42/start", "/ping/uuidTOKEN42"]
        assert "uuidTOKEN42" not in result.stdout
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
