"""No input reaches a traceback (issue 14): each reproduced case, then fuzzers over the whole class.

The property for every input: an exit code in {0, 1, 2, 3}, one valid envelope on stdout under --json
(conftest's run_cli checks it against the schemas), no internal error, bounded time; the hostile
files also run as real processes under an address-space limit.
"""

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, run_cli, write_config

FUZZ = settings(max_examples=int(os.environ.get("BAK_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MEMORY_LIMIT = 1 << 30


def run_limited(*args: str, stdin: bytes = b"", env: dict | None = None, timeout: float = 30) -> tuple[int, dict | None, str]:
    """bak as a process under a 1 GiB address-space limit: (exit code, envelope, stderr)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    full_env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "bak", *args, "--json"], input=stdin, capture_output=True,
                          timeout=timeout, env=full_env, preexec_fn=limit)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    envelope = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, envelope, stderr


def assert_clean(result, codes=(0, 1, 2, 3)):
    assert result.code in codes, (result.code, result.stdout[-2000:])
    assert result.envelope is not None, result.stdout[-2000:]
    assert not [e for e in result.envelope["errors"] if e["code"] == "internal_error"], result.envelope["errors"]
    assert "Traceback" not in result.stderr


def lab(home: Path) -> dict:
    (home / "src").mkdir(exist_ok=True)
    (home / "src" / "a.txt").write_text("a")
    data = {"version": 1, "destinations": {"here": {"kind": "local", "path": str(home / "dest")}},
            "policies": {"p": {"keep_last": 2}},
            "targets": [{"name": "files", "method": "rsync", "destinations": ["here"], "policy": "p",
                         "rsync": {"source": str(home / "src")}}]}
    write_config(home / "config.yaml", data)
    return data


# --- config files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    "version: 1\nx: café\n".encode("latin-1"),
    "version: 1\n".encode("utf-16"),
    bytes(range(256)) * 4,
    b"",
])
def test_config_bytes_that_are_not_yaml_text_are_bad_input(bak_home, content):
    (bak_home / "config.yaml").write_bytes(content)
    result = run_cli("config", "check")
    assert_clean(result, (2,))


@pytest.mark.parametrize("special", ["/proc/self/mem", "/dev/null", "/dev/zero", "fifo", "folder"])
def test_config_paths_that_are_not_regular_files_are_bad_input(bak_home, special):
    path = Path(special)
    if special == "fifo":
        path = bak_home / "fifo"
        os.mkfifo(path)
    elif special == "folder":
        path = bak_home / "folder"
        path.mkdir()
    result = run_cli("config", "check", "--config", str(path))
    assert_clean(result, (2,))
    message = result.envelope["errors"][0]["message"]
    assert "not found" not in message and any(w in message for w in ("folder", "not a regular file", "cannot read")), message


def test_a_billion_laughs_is_refused_at_once_in_little_memory(bak_home):
    laughs = ["version: 1", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        laughs.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    (bak_home / "config.yaml").write_text("\n".join(laughs) + "\n")
    started = time.monotonic()
    code, envelope, _ = run_limited("config", "check", env={"BAK_CONFIG": str(bak_home / "config.yaml")})
    assert code == 2 and time.monotonic() - started < 10
    assert "expands to more than" in envelope["errors"][0]["message"]
    assert len(json.dumps(envelope)) < 10_000


def test_deep_nesting_and_huge_values_are_bounded(bak_home):
    config = bak_home / "config.yaml"
    config.write_text("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    code, envelope, _ = run_limited("config", "check", env={"BAK_CONFIG": str(config)})
    assert code == 2
    config.write_text("version: 1\ntargets:\n  - name: " + "x" * 100_000 + "\n    method: rsync\n    destinations: []\n")
    code, envelope, _ = run_limited("config", "check", env={"BAK_CONFIG": str(config)})
    assert code == 2 and len(json.dumps(envelope)) < 10_000


@pytest.mark.parametrize("edit, where", [
    (lambda d: d["targets"][0].update(interval="1d\n"), "targets[0].interval"),
    (lambda d: d["targets"][0].update(interval="99999999999999999999d"), "targets[0].interval"),
    (lambda d: d["targets"][0].update(timeout="99999999999999w"), "targets[0].timeout"),
    (lambda d: d["targets"][0].update(name="files\n"), "targets[0].name"),
    (lambda d: d["targets"][0]["rsync"].update(source="/srv/data\n"), "targets[0].rsync.source"),
    (lambda d: d["destinations"]["here"].update(path="/srv/backups\n"), "destinations.here.path"),
    (lambda d: d.update({1: "x", None: "y"}), "1"),
    (lambda d: d["destinations"].update({5: {"kind": "local", "path": "/x"}}), "destinations"),
    (lambda d: d.update(hosts={1: {"address": "h"}}), "hosts"),
    (lambda d: d["policies"].update({True: {"keep_last": 1}}), "policies"),
])
def test_values_the_schema_must_refuse_name_their_key_path(bak_home, edit, where):
    data = lab(bak_home)
    edit(data)
    (bak_home / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("config", "check")
    assert_clean(result, (2,))
    assert any(e["where"].startswith(where) for e in result.envelope["errors"]), result.envelope["errors"]


def test_a_database_name_with_a_newline_is_refused(bak_home):
    data = lab(bak_home)
    data["targets"].append({"name": "db", "method": "pg_dump", "destinations": ["here"],
                            "pg_dump": {"database": "x\n"}})
    write_config(bak_home / "config.yaml", data)
    result = run_cli("config", "check")
    assert result.code == 2 and result.envelope["errors"][0]["where"] == "targets[1].pg_dump.database"


# --- arguments and stdin -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, stdin", [
    (["prune", "--simulate", "--keep-daily", "1", "--every", "99999999999999w"], None),
    (["prune", "--simulate", "--keep-daily", "1", "--every", "1m", "--days", "36500"], None),
    (["prune", "--simulate", "--keep-daily", "1"], bytes(range(256))),
    (["prune", "--safety-older-than", "forever", "--dry-run"], None),
    (["restore", "--target", "files", "--into", "restored\n", "--dry-run"], None),
    (["list", "--since", "yesterday"], None),
])
def test_arguments_that_used_to_crash_are_bad_input(bak_home, args, stdin):
    lab(bak_home)
    code, envelope, _ = run_limited(*args, stdin=stdin or b"")
    assert code == 2 and envelope and envelope["errors"], envelope


def test_a_restore_into_a_name_with_a_newline_creates_nothing(bak_home):
    lab(bak_home)
    assert run_cli("create").code == 0
    result = run_cli("restore", "--target", "files", "--into", str(bak_home / "restored\n"))
    assert result.code == 2
    assert not [p for p in bak_home.iterdir() if p.name.startswith("restored")]


# --- wizard answers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"folders: [\n", bytes(range(256)), b"just a scalar\n", b"- a\n- list\n", b"",
                                     b"folders:\n  - {name: docs}\n"])
def test_wizard_answers_that_are_not_answers_are_bad_input(bak_home, content):
    answers = bak_home / "answers.yaml"
    answers.write_bytes(content)
    result = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(bak_home / "out.yaml"))
    assert_clean(result, (2,))
    assert not (bak_home / "out.yaml").exists()


# --- SSH peers that misbehave ----------------------------------------------------------------------------
@pytest.fixture
def rude_server():
    """Accepts a TCP connection and closes it at once, as a broken or overloaded sshd does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def ssh_lab(home: Path, port: int) -> None:
    known = home / "known_hosts"
    known.write_text("")
    write_config(home / "config.yaml", {
        "version": 1, "hosts": {"box": {"address": "127.0.0.1", "port": port, "connect_timeout": 3,
                                        "known_hosts": str(known)}},
        "destinations": {"remote": {"kind": "ssh", "host": "box", "path": "/srv/backups"}},
        "targets": [{"name": t, "method": "config", "destinations": ["remote"],
                     "config": {"source": str(home)}} for t in ("one", "two", "three")]})


@pytest.mark.parametrize("command", [["status"], ["list"], ["verify"], ["restore", "--target", "one", "--dry-run"],
                                     ["doctor"], ["ssh", "check"]])
def test_a_host_that_closes_the_connection_gives_one_clean_error(bak_home, rude_server, command):
    ssh_lab(bak_home, rude_server)
    code, envelope, stderr = run_limited(*command)
    assert code in (1, 3) and envelope is not None
    assert "paramiko" not in stderr and "banner" not in stderr.lower(), stderr
    messages = [e["message"] for e in envelope["errors"]]
    pairs = [(e["message"], e["where"]) for e in envelope["errors"]]
    assert len(pairs) == len(set(pairs)), pairs  # one host, one error, however many targets
    assert any("closed the connection" in m or "cannot connect" in m for m in messages), messages


def test_a_refused_port_says_so(bak_home):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ssh_lab(bak_home, port)
    code, envelope, _ = run_limited("status")
    assert code == 1 and any("connection refused" in e["message"] for e in envelope["errors"]), envelope
    assert not any("Errno None" in e["message"] for e in envelope["errors"])


# --- exit codes as documented --------------------------------------------------------------------------------
def test_log_without_a_config_is_like_every_other_command(tmp_path, monkeypatch):
    monkeypatch.setenv("BAK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BAK_CONFIG", str(tmp_path / "none.yaml"))
    result = run_cli("log")
    assert result.code == 2 and result.envelope["errors"][0]["code"] == "config_missing"
    assert not (tmp_path / "state" / "journal.sqlite").exists()


def test_usage_errors_are_one_envelope_under_json(bak_home):
    lab(bak_home)
    for args in (["prune", "--bogus"], ["nope"], ["config", "nope"], ["list", "--vmid", "x"]):
        code, envelope, stderr = run_limited(*args)
        assert code == 2 and envelope["errors"][0]["code"] == "bad_input", (args, envelope, stderr)


# --- fuzzers ------------------------------------------------------------------------------------------------
VOCABULARY = ["version", "hosts", "destinations", "policies", "targets", "schedules", "notify", "name", "method", "kind",
              "path", "host", "rsync", "pg_dump", "vzdump", "source", "database", "vmid", "interval", "timeout",
              "keep_last", "keep_daily", "address", "port", "cron", "local", "here", "files", "1d", "6h", "rsync"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.sampled_from(VOCABULARY), st.text(max_size=20))
keys = st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none())
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


@FUZZ
@given(doc=documents, version=st.sampled_from([None, 1, "1", 2]))
def test_fuzz_random_yaml_documents_as_config(bak_home, doc, version):
    if isinstance(doc, dict) and version is not None:
        doc = {"version": version, **doc}
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.representer.RepresenterError:
        return
    (bak_home / "config.yaml").write_text(text, encoding="utf-8")
    for command in (["config", "check"], ["status"], ["list"]):
        assert_clean(run_cli(*command), (0, 1, 2))


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes_as_config(bak_home, data):
    (bak_home / "config.yaml").write_bytes(data)
    assert_clean(run_cli("config", "check"), (0, 2))


def leaf_commands(group: click.Group, prefix=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


# Commands that write outside the lab (crontabs, ~/.claude, the demo's own folders) stay out of the fuzzer.
UNSAFE = {("demo",), ("schedule", "install"), ("schedule", "remove"), ("skill", "install"), ("wizard", "setup"),
          ("bootstrap",)}


def option_values(option: click.Parameter):
    if getattr(option, "is_flag", False):
        return st.just([])
    return st.one_of(st.sampled_from(["files", "here", "0", "-1", "99999999999999999999", "1d", "6h", "2026-01-01",
                                      "x\ny", "../..", "/", "", "é", "a\tb"]),
                     st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=10),
                     st.binary(max_size=10).filter(lambda b: b"\x00" not in b).map(
                         lambda b: b.decode("utf-8", "surrogateescape"))).map(lambda v: [v])
    # What a real command line can carry: no NUL, and bytes that are not UTF-8 as Python decodes them (lone
    # surrogates \udc80-\udcff); never another lone surrogate, which no argv can hold (and os.stat cannot take).


@st.composite
def argument_vectors(draw):
    from bak.cli import cli

    commands = [c for c in leaf_commands(cli) if c[0] not in UNSAFE]
    path, command = draw(st.sampled_from(commands))
    args = list(path)
    # --config and --state-dir stay the lab's: a drawn absolute path (/dev0null) would be a real folder made at the
    # root of this machine; test_output_paths fuzzes them with hostile paths that are all in the lab, or `/`.
    options = [p for p in command.params if isinstance(p, click.Option)
               and p.name not in ("as_json", "config_path", "state_path")]
    for option in draw(st.lists(st.sampled_from(options), max_size=4, unique_by=lambda p: p.name)) if options else []:
        args.append(draw(st.sampled_from(option.opts)))
        args += draw(option_values(option))
    args += draw(st.lists(st.sampled_from(["--bogus", "x", "-", "files"]), max_size=2))  # ("--" would swallow --json)
    if "restore" in path and "--dry-run" not in args:
        args.append("--dry-run")  # a fuzzed restore plans; it never writes where a random --into points
    if "prune" in path and "--dry-run" not in args:
        args.append("--dry-run")
    return args


@FUZZ
@given(args=argument_vectors())
def test_fuzz_random_argument_vectors_for_every_command(bak_home, monkeypatch, args):
    monkeypatch.chdir(bak_home)
    if not (bak_home / "config.yaml").exists():
        lab(bak_home)
    started = time.monotonic()
    result = run_cli(*args, stdin="")
    assert_clean(result)
    assert time.monotonic() - started < 30, args


answers = st.dictionaries(st.sampled_from(["hosts", "destinations", "copies", "pve", "databases", "folders", "vault",
                                           "claude_config", "docker_volumes", "scheduler", "other"]), documents, max_size=5)


@FUZZ
@given(doc=st.one_of(answers, documents))
def test_fuzz_random_wizard_answers(bak_home, doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.representer.RepresenterError:
        return
    (bak_home / "answers.yaml").write_text(text, encoding="utf-8")
    out = bak_home / "written.yaml"
    result = run_cli("wizard", "setup", "--answers", str(bak_home / "answers.yaml"), "--output", str(out), "--force")
    assert_clean(result, (0, 2, 3))
    if result.code == 0:
        assert run_cli("config", "check", "--config", str(out)).code == 0


@FUZZ
@given(text=st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["2026-11-30T06:00:00", "pg-app-2026-11-30_120000.dump", "rsync-x-2026-02-30", "", " ", "2026-13-01"]),
    max_size=10).map("\n".join)))
def test_fuzz_random_stdin_for_the_simulator(text):
    result = run_cli("prune", "--simulate", "--keep-daily", "3", "--keep-weekly", "2", stdin=text)
    assert_clean(result, (0, 2))
