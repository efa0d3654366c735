"""The fixtures themselves: the guard refuses non-loopback, sshd and PostgreSQL answer."""

import socket
import subprocess

import pytest


def test_guard_refuses_a_non_loopback_address():
    with socket.socket() as s, pytest.raises(AssertionError, match="non-loopback"):
        s.connect(("198.51.100.7", 9))  # TEST-NET-2: refused by the guard before any packet leaves


def test_guard_refuses_a_hostname():
    with pytest.raises(AssertionError, match="non-loopback host"):
        socket.create_connection(("example.invalid", 22), timeout=0.1)


def test_sshd_accepts_our_key(sshd, tmp_path):
    known = sshd.trust(tmp_path / "known_hosts")
    out = subprocess.run(["ssh", "-i", str(sshd.client_key), "-p", str(sshd.port), "-o", f"UserKnownHostsFile={known}",
                          "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"{sshd.user}@127.0.0.1", "echo", "hi"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hi"


def test_postgres_answers(postgres):
    assert postgres.psql("SELECT 40 + 2").strip() == "42"
