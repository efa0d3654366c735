"""A real restic repository as a destination: atomic snapshots, verify, restore, prune, killed runs."""

import hashlib
import os
import subprocess
import sys
import time

import pytest

from bak.stores.fanout import FanOut
from bak.stores.restic import ResticStore
from conftest import REPO, need, run_cli, write_config


@pytest.fixture
def repo(bak_home):
    need("restic")
    secret = bak_home / "restic.pass"
    secret.write_text("correct horse battery staple\n")
    secret.chmod(0o600)
    return ResticStore("usb", str(bak_home / "restic-repo"), {"file": str(secret)})


def test_an_artifact_is_one_tagged_snapshot_readable_back(repo):
    data = os.urandom(3 << 20)
    fan = FanOut([repo], "postgresql", "pg-app-2026-11-30_120000.dump")
    for i in range(0, len(data), 1 << 16):
        fan.write(data[i:i + (1 << 16)])
    result = fan.commit()
    assert result.ok and result.sha256 == hashlib.sha256(data).hexdigest()
    names = sorted(e.name for e in repo.list("postgresql"))
    assert names == ["pg-app-2026-11-30_120000.dump", "pg-app-2026-11-30_120000.dump.sha256"]
    assert repo.read_small("postgresql", "pg-app-2026-11-30_120000.dump.sha256").decode().split()[0] == result.sha256
    with repo.open_read("postgresql", "pg-app-2026-11-30_120000.dump") as stream:
        back = b"".join(iter(lambda: stream.read(1 << 20), b""))
    assert back == data
    repo.remove("postgresql", "pg-app-2026-11-30_120000.dump")
    assert repo.list("postgresql") == []


KILLED = """
import os, signal, sys
sys.path.insert(0, {lib!r})
from bak.stores.fanout import FanOut
from bak.stores.restic import ResticStore
store = ResticStore("usb", {repo!r}, {{"file": {secret!r}}})
fan = FanOut([store], "postgresql", "pg-app-2026-11-30_130000.dump")
for _ in range(40):
    fan.write(os.urandom(1 << 20))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_leaves_nothing_complete_and_blocks_nothing(repo, bak_home):
    code = KILLED.format(lib=str(REPO / "lib"), repo=repo.repository, secret=repo.password_ref["file"])
    subprocess.run([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-x", "restic"], capture_output=True).returncode == 0:  # the orphaned restic
        assert time.monotonic() < deadline
        time.sleep(0.2)
    leftovers = repo.list("postgresql")
    assert all(e.name.endswith(".partial") for e in leftovers)
    for entry in leftovers:
        repo.remove("postgresql", entry.name)
    fan = FanOut([repo], "postgresql", "pg-app-2026-11-30_140000.dump")
    fan.write(b"after the crash")
    assert fan.commit().ok
    repo.remove("postgresql", "pg-app-2026-11-30_140000.dump")  # forget --prune needs the exclusive lock


def test_an_untagged_snapshot_is_a_partial_that_the_next_run_removes(repo, bak_home):
    repo.ensure_repository()
    repo.run(["restic", "backup", "--stdin", "--stdin-filename", "postgresql/pg-app-2026-11-30_150000.dump",
              "--tag", "bak", "--host", "bak"], stdin=b"half of a dump")
    assert [e.name for e in repo.list("postgresql")] == ["pg-app-2026-11-30_150000.dump.partial"]
    repo.remove("postgresql", "pg-app-2026-11-30_150000.dump.partial")
    assert repo.list("postgresql") == []


def test_the_password_is_never_on_a_command_line(repo):
    seen = []
    fan = FanOut([repo], "postgresql", "pg-app-2026-11-30_140000.dump")
    fan.write(b"x" * 1000)
    deadline = time.monotonic() + 20
    while not any(b"restic\0backup" in c for c in seen) and time.monotonic() < deadline:
        for cmdline in __import__("pathlib").Path("/proc").glob("[0-9]*/cmdline"):
            try:
                seen.append(cmdline.read_bytes())
            except OSError:
                pass
    fan.commit()
    assert any(b"restic" in c for c in seen)
    assert not any(b"correct horse" in c for c in seen)


def test_pg_dump_into_restic_verify_restore_prune(bak_home, postgres, monkeypatch):
    need("restic")
    from test_pg import PASSWORD, lab_config

    secret = bak_home / "restic.pass"
    secret.write_text("s3cret restic\n")
    secret.chmod(0o600)
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    postgres.psql("DROP DATABASE IF EXISTS tiny")
    postgres.psql("CREATE DATABASE tiny")
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}'; END IF; END$$")
    postgres.psql("ALTER ROLE backup CREATEDB")  # restoring beside creates a database
    postgres.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; GRANT SELECT ON t TO backup", db="tiny")
    lab_config(bak_home, postgres, database="tiny",
               dests={"usb": {"kind": "restic", "repository": str(bak_home / "repo"), "password": {"file": str(secret)},
                              "medium": "usb", "offsite": True},
                      "local": {"kind": "local", "path": str(bak_home / "local")}})
    for _ in range(2):
        created = run_cli("create")
        assert created.code == 0, created.envelope
        time.sleep(1.1)
    listed = run_cli("list", "--destination", "usb").envelope["result"]["backups"]
    assert len(listed) == 2 and all(b["checksum"] for b in listed)
    assert run_cli("verify", "--all-backups").code == 0
    restored = run_cli("restore", "--target", "pg-app", "--from", "usb", "--no-owner", "--into", "tiny_back")
    assert restored.code == 0, restored.envelope
    assert postgres.psql("SELECT count(*) FROM t", db="tiny_back").strip() == "1000"
    postgres.psql("DROP DATABASE tiny_back")
    data = __import__("yaml").safe_load((bak_home / "config.yaml").read_text())
    data["policies"]["pg"] = {"keep_last": 1}
    write_config(bak_home / "config.yaml", data)
    assert run_cli("prune").code == 0
    assert len(run_cli("list", "--destination", "usb").envelope["result"]["backups"]) == 1
