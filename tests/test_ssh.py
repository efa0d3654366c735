"""SSH runner against a real sshd on 127.0.0.1: host keys, argv quoting, streaming, one connection."""

import hashlib
import json
import threading
import time

import pytest

from bak import config as bak_config
from bak.errors import CommandFailed, HostKeyMismatch, HostKeyUnknown, ToolMissing, TransportError
from bak.run import Hosts
from bak.run.ssh import SSHRunner
from conftest import run_cli, write_config


def make_config(sshd, known_hosts=None):
    return bak_config.from_data({"version": 1, "hosts": {"box": sshd.host_config(known_hosts)}})


@pytest.fixture
def trusted(sshd, bak_home):
    known = sshd.trust(bak_home / "known_hosts")
    with Hosts(make_config(sshd, known)) as hosts:
        yield hosts.runner("box")


def test_unknown_host_key_exits_3_with_fingerprint_then_trust_fixes_it(sshd, bak_home):
    write_config(bak_home / "config.yaml", {"version": 1, "hosts": {"box": sshd.host_config()}})
    refused = run_cli("ssh", "check", "box")
    assert refused.code == 3
    error = refused.envelope["errors"][0]
    assert error["code"] == "host_key_unknown"
    assert sshd.fingerprint() in error["message"]
    assert "bak ssh trust box --fingerprint" in error["hint"]

    wrong = run_cli("ssh", "trust", "box", "--fingerprint", "SHA256:" + "A" * 43)  # well formed, another key's
    assert wrong.code == 3 and wrong.envelope["errors"][0]["code"] == "host_key_mismatch"
    assert not (bak_home / "state" / "known_hosts").exists()

    trusted = run_cli("ssh", "trust", "box", "--fingerprint", sshd.fingerprint())
    assert trusted.code == 0, trusted.envelope
    assert trusted.envelope["result"]["fingerprint"] == sshd.fingerprint()
    assert (bak_home / "state" / "known_hosts").stat().st_mode & 0o777 == 0o600

    ok = run_cli("ssh", "check", "box")
    assert ok.code == 0, ok.envelope
    assert ok.envelope["result"]["hosts"][0]["ok"] is True

    again = run_cli("ssh", "trust", "box")
    assert again.envelope["result"]["already_trusted"] is True


def test_a_changed_host_key_is_refused(sshd, bak_home, tmp_path):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    known = bak_home / "known_hosts"
    known.write_text(f"{sshd.host_entry} {other}\n")
    with Hosts(make_config(sshd, known)) as hosts:
        with pytest.raises(HostKeyMismatch, match="HOST KEY CHANGED") as caught:
            hosts.runner("box").run(["true"])
    assert caught.value.exit_code == 3


def test_unknown_key_raises_in_the_library_too(sshd, bak_home):
    with Hosts(make_config(sshd, bak_home / "empty_known_hosts")) as hosts:
        with pytest.raises(HostKeyUnknown) as caught:
            hosts.runner("box").run(["true"])
    assert caught.value.details["fingerprint"] == sshd.fingerprint()


WEIRD = ["a b", "it's", '"quoted"', "$HOME", "$(id)", "`id`", ";", "&& echo pwned", "*", "back\\slash",
         "", "line\nbreak", "-n", "--", "ünïcødé", "tab\there"]


def test_argv_arrives_intact(trusted):
    out = trusted.run(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *WEIRD])
    assert json.loads(out.stdout) == WEIRD


def test_one_connection_serves_many_commands_and_sftp(trusted):
    before = SSHRunner.connections_opened
    for _ in range(5):
        trusted.run(["true"])
    trusted.sftp().listdir("/")
    trusted.run(["true"])
    assert SSHRunner.connections_opened - before == 1


def test_stdout_streams_into_a_sink_and_stdin_streams_in(trusted):
    seen = []
    trusted.run(["head", "-c", str(8 << 20), "/dev/zero"], stdout=seen.append)
    assert sum(map(len, seen)) == 8 << 20 and len(seen) > 1

    payload = bytes(range(256)) * 20000
    out = trusted.run(["sha256sum"], stdin=payload)
    assert out.stdout_text.split()[0] == hashlib.sha256(payload).hexdigest()


def test_non_secret_env_is_passed(trusted):
    out = trusted.run(["sh", "-c", 'printf %s "$BAK_PROBE"'], env={"BAK_PROBE": "x y"})
    assert out.stdout_text == "x y"


def test_secret_file_is_private_nameless_and_gone_after(trusted):
    with trusted.secret_file(b"hunter2\n") as path:
        assert path.startswith("/proc/") and "/fd/" in path  # a descriptor of the guardian: the file has no name
        assert trusted.run(["stat", "-L", "-c", "%a", path]).stdout_text.strip() == "600"
        assert trusted.run(["cat", path]).stdout == b"hunter2\n"
    assert trusted.run(["test", "-e", path], check=False).returncode == 1


def test_failures_keep_exit_status_and_stderr(trusted):
    with pytest.raises(CommandFailed) as caught:
        trusted.run(["sh", "-c", "echo boom >&2; exit 7"])
    assert caught.value.returncode == 7 and "boom" in caught.value.stderr_tail
    assert trusted.run(["sh", "-c", "exit 3"], check=False).returncode == 3


def test_missing_remote_tool_says_so(trusted):
    with pytest.raises(ToolMissing, match="not installed on box"):
        trusted.run(["bak-no-such-tool"])


def test_timeout_kills_a_stuck_command(trusted):
    start = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out"):
        trusted.run(["sleep", "30"], timeout=1)
    assert time.monotonic() - start < 10


def test_sshd_killed_mid_command_is_a_transport_error(private_sshd, bak_home):
    known = private_sshd.trust(bak_home / "known_hosts")
    with Hosts(make_config(private_sshd, known)) as hosts:
        runner = hosts.runner("box")
        runner.run(["true"])
        threading.Timer(0.5, private_sshd.stop).start()
        start = time.monotonic()
        with pytest.raises(TransportError):
            runner.run(["sleep", "20"])
        assert time.monotonic() - start < 15


def test_connection_refused_is_clear(bak_home):
    from conftest import free_port

    cfg = bak_config.from_data({"version": 1, "hosts": {"gone": {"address": "127.0.0.1", "port": free_port(),
                                                                 "connect_timeout": 2}}})
    with Hosts(cfg) as hosts, pytest.raises(TransportError, match="cannot connect to gone"):
        hosts.runner("gone").run(["true"])
