"""Locks (one per target, released when the holder dies) and the journal."""

import os
import signal
import subprocess
import sys

import pytest

from bak.errors import LockHeld, WriteFailed
from bak.journal import Journal
from bak.locks import is_locked, target_lock
from conftest import REPO, run_cli, write_config

HOLDER = """
import sys, time
sys.path.insert(0, {lib!r})
from bak.locks import target_lock
with target_lock("db", "create"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_holder_is_refused_with_the_holder_named_and_a_killed_holder_frees_it(bak_home):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(lib=str(REPO / "lib"))], stdout=subprocess.PIPE,
                            env={**os.environ})
    try:
        assert proc.stdout.readline().strip() == b"locked"
        with pytest.raises(LockHeld) as caught:
            with target_lock("db", "prune"):
                pass
        assert caught.value.exit_code == 3
        assert f"pid {proc.pid}" in caught.value.message and "create" in caught.value.message
        assert is_locked("db")
        with target_lock("other", "create"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not is_locked("db")
    with target_lock("db", "create"):
        pass


def test_journal_records_success_and_failure_with_tail(bak_home):
    journal = Journal.default()
    with journal.operation("create", "db") as op:
        op.bytes, op.checksum = 123, "ab" * 32
    with pytest.raises(WriteFailed):
        with journal.operation("create", "db"):
            raise WriteFailed("destination nfs is full", code="disk_full")
    rows = journal.query(target="db")
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert rows[0]["error_tail"].startswith("disk_full: destination nfs is full")
    assert rows[1]["bytes"] == 123 and rows[1]["checksum"] == "ab" * 32
    assert rows[1]["ended_at"] >= rows[1]["started_at"]
    assert (bak_home / "state" / "journal.sqlite").stat().st_mode & 0o777 == 0o600

    write_config(bak_home / "config.yaml", {"version": 1})
    shown = run_cli("log", "--target", "db")
    assert shown.code == 0
    assert [o["status"] for o in shown.envelope["result"]["operations"]] == ["failed", "ok"]
    assert run_cli("log", "--since", "not-a-date").code == 2


def test_a_run_killed_mid_operation_shows_as_interrupted(bak_home):
    code = f"""
import sys, os, signal
sys.path.insert(0, {str(REPO / 'lib')!r})
from bak.journal import Journal
with Journal.default().operation("create", "db"):
    os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", code], env={**os.environ})
    rows = Journal.default().query(target="db")
    assert rows[0]["status"] == "interrupted" and rows[0]["ended_at"] is None


def test_secrets_are_scrubbed_from_the_journal(bak_home):
    from bak import secrets

    secrets.register("hunter2-password")
    journal = Journal.default()
    with pytest.raises(RuntimeError):
        with journal.operation("create", "db", {"note": "uses hunter2-password"}):
            raise RuntimeError("auth failed for hunter2-password")
    row = journal.query(target="db")[0]
    assert "hunter2-password" not in row["error_tail"] and "hunter2-password" not in str(row["details"])


def test_a_second_bak_run_on_a_locked_target_exits_3_naming_the_holder(bak_home):
    from conftest import bak_subprocess, write_config

    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"here": {"kind": "local", "path": str(bak_home / "d")}},
        "targets": [{"name": "db", "method": "pg_dump", "destinations": ["here"], "pg_dump": {"database": "app"}}]})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(lib=str(REPO / "lib"))], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        second = bak_subprocess("create", "--target", "db", "--json")
        out, _ = second.communicate(timeout=60)
        import json

        envelope = json.loads(out)
        assert second.returncode == 3
        assert envelope["errors"][0]["code"] == "lock_held" and f"pid {holder.pid}" in envelope["errors"][0]["message"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
