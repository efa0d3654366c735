"""Verify, drill, restore and status tell the truth (issue 13), against real damage, real servers, real journals."""

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import bak_subprocess, need, run_cli, write_config
from test_files import files_config, make_tree
from test_pg import PASSWORD, pg_options


# --- 1. status always answers ----------------------------------------------------------------------
def status_lab(home: Path) -> None:
    folder = home / "dest" / "postgresql" / "db"
    folder.mkdir(parents=True)
    write_config(home / "config.yaml", {
        "version": 1, "destinations": {"here": {"kind": "local", "path": str(home / "dest")}},
        "targets": [{"name": name, "method": "pg_dump", "destinations": ["here"], "interval": "1d",
                     "pg_dump": {"database": name}} for name in ("db", "other")]})


journal_rows = st.lists(st.fixed_dictionaries({
    "kind": st.sampled_from(["create", "verify", "drill", "restore", "prune", "discover", "bogus"]),
    "target": st.one_of(st.none(), st.sampled_from(["db", "other", "gone"]), st.text(max_size=5)),
    "started_at": st.one_of(st.just(datetime.now(timezone.utc).isoformat(timespec="seconds")),
                            st.text(max_size=12), st.just("2026-13-45T99:99:99")),
    "status": st.sampled_from(["ok", "failed", "partial", "interrupted", "running", "??"]),
    "error_tail": st.one_of(st.none(), st.just(""), st.just("\n\n"), st.text(max_size=40)),
    "details": st.one_of(st.none(), st.just("{}"), st.just("[1, 2]"), st.just("not json"),
                         st.just('{"restore_duration_s": "x"}'), st.just('{"name": 5}'),
                         st.just('{"store": "here", "name": "pg-db-2026-01-01_000000.dump", "restore_duration_s": 2}'),
                         st.just('{"items": 5}'), st.just('{"items": [1, {"host": 2}, {"host": "h", "name": "n", '
                                                         '"kind": "guest", "vmid": "x"}]}')),
    "pid": st.one_of(st.none(), st.integers(1, 4 << 20)),
}), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=journal_rows)
def test_status_answers_whatever_the_journal_holds(bak_home, rows):
    if not (bak_home / "config.yaml").exists():
        status_lab(bak_home)
    from bak.journal import Journal

    Journal.default().close()  # creates the journal
    db = sqlite3.connect(bak_home / "state" / "journal.sqlite")
    db.execute("DELETE FROM operations")
    for row in rows:
        db.execute("INSERT INTO operations(kind, target, started_at, status, error_tail, details, pid, hostname) "
                   "VALUES (?,?,?,?,?,?,?,?)", (row["kind"], row["target"], row["started_at"], row["status"],
                                                row["error_tail"], row["details"], row["pid"], os.uname().nodename))
    db.commit()
    db.close()
    for command in (["status"], ["log"], ["dr", "plan"]):
        result = run_cli(*command)
        assert result.code in (0, 1), result.stdout
        assert result.envelope is not None


# --- 2. parallel verify over SSH -------------------------------------------------------------------
def test_parallel_verify_over_ssh_never_hangs_or_fails_a_good_copy(bak_home, sshd):
    need("rsync")
    known = sshd.trust(bak_home / "known_hosts")
    targets = []
    for name in ("a", "b", "c"):
        make_tree(bak_home / f"src-{name}", files=300, size=512)
        targets.append({"name": name, "method": "config", "destinations": ["here", "box"], "interval": "1d",
                        "config": {"source": str(bak_home / f"src-{name}")}})
    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": {"box": sshd.host_config(known)},
        "destinations": {"here": {"kind": "local", "path": str(bak_home / "here")},
                         "box": {"kind": "ssh", "host": "box", "path": str(bak_home / "remote")}},
        "targets": targets})
    for _ in range(2):
        assert run_cli("create").code == 0
        time.sleep(1.05)
    for _ in range(6):
        proc = bak_subprocess("verify", "--all-backups", "--json")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode()[-2000:] + err.decode()[-2000:]
        assert len(json.loads(out)["result"]["checked"]) == 12


# --- 4. drills that work for every format and a backup role with the usual grants ------------------
@pytest.mark.parametrize("fmt", ["custom", "plain_gz"])
def test_drill_as_a_backup_role_with_default_privileges(bak_home, postgres, monkeypatch, fmt):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}' CREATEDB; END IF; END$$")
    postgres.psql("ALTER ROLE backup CREATEDB")
    postgres.psql("DROP DATABASE IF EXISTS granted WITH (FORCE)")
    postgres.psql("CREATE DATABASE granted")
    postgres.psql("ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO backup; "
                  "CREATE TABLE t AS SELECT generate_series(1, 500) AS g; CREATE TABLE empty_one (x int)", db="granted")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"here": {"kind": "local", "path": str(bak_home / "here")}},
        "targets": [{"name": "granted", "method": "pg_dump", "destinations": ["here"],
                     "pg_dump": pg_options(postgres, database="granted", format=fmt, sanity_queries=["SELECT g FROM t"])}]})
    assert run_cli("create").code == 0
    drill = run_cli("drill")
    assert drill.code == 0, drill.envelope
    checks = drill.envelope["result"]["drills"][0]["checks"]
    assert next(c for c in checks if c["check"] == "row counts")["ok"]
    postgres.psql("DROP DATABASE granted WITH (FORCE)")


# --- 5. restore takes a good copy; rights are checked first -----------------------------------------
def test_restore_skips_a_damaged_copy_and_checks_rights_first(bak_home, postgres, monkeypatch):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}'; END IF; END$$")
    postgres.psql("DROP DATABASE IF EXISTS copies WITH (FORCE)")
    postgres.psql("CREATE DATABASE copies OWNER backup")
    postgres.psql("CREATE TABLE t AS SELECT generate_series(1, 100) AS g; ALTER TABLE t OWNER TO backup", db="copies")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {d: {"kind": "local", "path": str(bak_home / d)} for d in ("first", "second")},
        "targets": [{"name": "copies", "method": "pg_dump", "destinations": ["first", "second"],
                     "pg_dump": pg_options(postgres, database="copies", sanity_queries=[])}]})
    assert run_cli("create").code == 0
    postgres.psql("ALTER ROLE backup NOCREATEDB")
    for args in (["--dry-run"], []):
        refused = run_cli("restore", "--target", "copies", *args)
        assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "pg_privilege", refused.envelope
    postgres.psql("ALTER ROLE backup CREATEDB")
    dump = next((bak_home / "first" / "postgresql" / "copies").glob("*.dump"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    restored = run_cli("restore", "--target", "copies", "--into", "copies_back")
    assert restored.code == 0, restored.envelope
    assert restored.envelope["result"]["store"] == "second"
    assert restored.envelope["result"]["skipped"][0]["store"] == "first"
    assert any("skipped the copy on first" in w for w in restored.envelope["warnings"])
    assert postgres.psql("SELECT count(*) FROM t", db="copies_back").strip() == "100"
    forced_bad = run_cli("restore", "--target", "copies", "--from", "first", "--into", "copies_bad")
    assert forced_bad.code == 1
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname = 'copies_bad'").strip() == "0"
    for db in ("copies", "copies_back"):
        postgres.psql(f"DROP DATABASE {db} WITH (FORCE)")


# --- 6. the journal states outcomes as they were -----------------------------------------------------
def test_a_create_whose_only_destination_failed_is_journaled_failed_with_its_reason(bak_home):
    source = bak_home / "src"
    make_tree(source, files=3)
    blocked = bak_home / "blocked"
    blocked.write_text("a file where the destination folder should be")
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(blocked)})
    result = run_cli("create")
    assert result.code == 1
    row = run_cli("log").envelope["result"]["operations"][0]
    assert row["status"] == "failed" and "nfs" in row["error_tail"]


def test_a_failed_drill_names_its_backup_and_copy(bak_home):
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=5)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)})
    name = run_cli("create").envelope["result"]["targets"][0]["name"]
    (dest / "rsync" / "files" / name / "dir1" / "file1.txt").write_bytes(b"rot")
    drill = run_cli("drill")
    assert drill.code == 1
    row = drill.envelope["result"]["drills"][0]
    assert (row["backup"], row["store"]) == (name, "nfs")
    assert drill.envelope["errors"][0]["where"] == f"nfs:{name}"


# --- 7. a damaged journal never stops a backup --------------------------------------------------------
def damage_truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def damage_header(path):
    data = bytearray(path.read_bytes())
    data[:16] = b"GARBAGEGARBAGE!!"
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": damage_truncate, "garbage header": damage_header,
          "not a database": lambda p: p.write_text("hello, I am a text file\n" * 100),
          "a folder": lambda p: (p.unlink(), p.mkdir()), "emptied": lambda p: p.write_bytes(b"")}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_journal_is_set_aside_and_the_backup_runs(bak_home, damage):
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=3)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)})
    for _ in range(30):  # enough history for a truncation to cut into the table
        assert run_cli("create", "--dry-run").code == 0
    assert run_cli("create").code == 0
    journal = bak_home / "state" / "journal.sqlite"
    sqlite3.connect(journal).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    for extra in ("-wal", "-shm"):
        Path(str(journal) + extra).unlink(missing_ok=True)
    DAMAGE[damage](journal)
    time.sleep(1.05)
    result = run_cli("create")
    assert result.code == 0, result.envelope
    assert any("could not be read" in w and "kept as" in w for w in result.envelope["warnings"])
    aside = [p for p in journal.parent.iterdir() if ".damaged-" in p.name]
    assert aside
    assert [o["kind"] for o in run_cli("log").envelope["result"]["operations"]] == ["create"]
    doctor = run_cli("doctor")
    assert any(c["check"] == "journal" and c["level"] == "warn" for c in doctor.envelope["result"]["checks"])


HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(60)
"""


def test_a_held_journal_is_waited_for_then_named(bak_home, monkeypatch):
    from bak import journal as bak_journal

    source = bak_home / "src"
    make_tree(source, files=3)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(bak_home / "dest")})
    bak_journal.Journal.default().close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(bak_home / "state" / "journal.sqlite")],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        monkeypatch.setattr(bak_journal, "HELD_WAIT_S", 1.0)
        assert run_cli("status").code == 1  # readers are not blocked (WAL): the dashboard still answers
        started = time.monotonic()
        result = run_cli("create")
        assert time.monotonic() - started < 10
        assert result.code == 3 and result.envelope["errors"][0]["code"] == "journal_busy", result.envelope
        assert f"pid {holder.pid}" in result.envelope["errors"][0]["message"]
    finally:
        holder.kill()
        holder.wait()


# --- 8. sizes as they are --------------------------------------------------------------------------------
def test_snapshot_sizes_are_their_data_and_a_missing_destination_is_missing(bak_home):
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=20, size=10000)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)})
    data = __import__("yaml").safe_load((bak_home / "config.yaml").read_text())
    data["destinations"]["second"] = {"kind": "local", "path": str(bak_home / "second")}
    data["targets"][0]["destinations"].append("second")
    write_config(bak_home / "config.yaml", data)
    first = run_cli("create").envelope["result"]["targets"][0]
    assert first["size"] == 200000 and first["added_bytes"] == 200000  # one copy's worth, not summed over two
    time.sleep(1.05)
    (source / "dir0" / "file0.txt").write_bytes(b"x" * 5000)
    second = run_cli("create").envelope["result"]["targets"][0]
    assert second["size"] == 195000 and second["added_bytes"] == 5000
    listed = run_cli("list", "--destination", "nfs").envelope["result"]["backups"]
    assert [(b["size"], b["added"]) for b in listed] == [(195000, 5000), (200000, 200000)]
    status = run_cli("status").envelope["result"]
    assert status["targets"][0]["newest"]["size"] == 195000 and status["targets"][0]["newest"]["added"] == 5000
    shutil.rmtree(bak_home / "second")
    missing = run_cli("status")
    assert missing.code == 1
    row = next(d for d in missing.envelope["result"]["destinations"] if d["destination"] == "second")
    assert row["level"] == "missing"


# --- 9. a damaged restic repository speaks restic's words ------------------------------------------------
def test_a_damaged_restic_pack_is_reported_in_restics_words(bak_home, postgres, monkeypatch):
    need("restic")
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}'; END IF; END$$")
    postgres.psql("DROP DATABASE IF EXISTS packs WITH (FORCE)")
    postgres.psql("CREATE DATABASE packs")
    postgres.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g; "
                  "GRANT SELECT ON t TO backup", db="packs")
    secret = bak_home / "restic.pass"
    secret.write_text("pack password\n")
    secret.chmod(0o600)
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"usb": {"kind": "restic", "repository": str(bak_home / "repo"),
                                               "password": {"file": str(secret)}}},
        "targets": [{"name": "packs", "method": "pg_dump", "destinations": ["usb"],
                     "pg_dump": pg_options(postgres, database="packs", sanity_queries=[])}]})
    assert run_cli("create").code == 0
    packs = sorted((bak_home / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    pack = packs[-1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.chmod(0o600)
    pack.write_bytes(bytes(data))
    proc = bak_subprocess("verify", "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and b"Traceback" not in err, err.decode()
    message = json.loads(out)["errors"][0]["message"]
    assert "could not be read" in message and "sha256" not in message
    assert "restic" in message and ("ciphertext" in message or "verification" in message or "decrypt" in message)
    postgres.psql("DROP DATABASE packs WITH (FORCE)")


# --- the whole picture: one damage at a time, then repaired -----------------------------------------------
def lab_tree(root: Path) -> None:
    make_tree(root, files=30, size=2048)
    (root / "café — naïve.txt").write_text("unicode")
    (root / "empty folder").mkdir()
    os.symlink("dir1/file1.txt", root / "shortcut")
    (root / "id_key").write_text("PRIVATE")
    (root / "id_key").chmod(0o600)


def snapshot_damages(snap: Path):
    """(what, damage, repair, the path verify must name) on a snapshot folder."""
    def keep(path):
        st_ = os.lstat(path)
        return path.read_bytes(), st_

    def flip():
        path = snap / "dir2" / "file2.txt"
        data, st_ = keep(path)
        broken = bytearray(data)
        broken[7] ^= 1
        path.write_bytes(bytes(broken))
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))  # bit rot: same size and time, other bytes
        return lambda: (path.write_bytes(data), os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns)))

    def truncate():
        path = snap / "dir3" / "file3.txt"
        data, st_ = keep(path)
        path.write_bytes(data[:100])
        return lambda: (path.write_bytes(data), os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns)))

    def delete():
        path = snap / "dir4" / "file4.txt"
        data, st_ = keep(path)
        path.unlink()
        return lambda: (path.write_bytes(data), os.chmod(path, stat.S_IMODE(st_.st_mode)),
                        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns)))

    def plant():
        path = snap / "planted.sh"
        path.write_text("#!/bin/sh\n")
        return path.unlink

    def unlink_symlink():
        path = snap / "shortcut"
        target = os.readlink(path)
        path.unlink()
        return lambda: os.symlink(target, path)

    def chmod_key():
        path = snap / "id_key"
        path.chmod(0o644)
        return lambda: path.chmod(0o600)

    def rmdir_empty():
        path = snap / "empty folder"
        mode = stat.S_IMODE(path.stat().st_mode)
        path.rmdir()
        return lambda: (path.mkdir(), path.chmod(mode))

    return [("flipped byte", flip, "dir2/file2.txt"), ("truncated file", truncate, "dir3/file3.txt"),
            ("deleted file", delete, "dir4/file4.txt"), ("planted file", plant, "planted.sh"),
            ("deleted symlink", unlink_symlink, "shortcut"), ("changed mode", chmod_key, "id_key"),
            ("removed empty folder", rmdir_empty, "empty folder")]


def test_each_damage_is_named_by_verify_fails_drill_and_restore_and_repaired_passes(bak_home):
    need("rsync")
    source, dest = bak_home / "src", bak_home / "dest"
    lab_tree(source)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=[])
    name = run_cli("create").envelope["result"]["targets"][0]["name"]
    snap = dest / "rsync" / "files" / name
    assert run_cli("verify").code == 0 and run_cli("drill").code == 0
    manifest = snap.parent / f"{name}.manifest"
    for what, damage, path in [*snapshot_damages(snap),
                               ("missing manifest", lambda: (manifest.rename(manifest.with_suffix(".kept")),
                                                             lambda: manifest.with_suffix(".kept").rename(manifest))[1],
                                "manifest")]:
        repair = damage()
        verify = run_cli("verify")
        assert verify.code == 1, what
        message = verify.envelope["errors"][0]["message"]
        assert name in message and "nfs" in message and path in message, (what, message)
        # without its manifest a snapshot is no backup at all (issue 30): nothing to drill or restore (exit 2)
        lost = 2 if what == "missing manifest" else 1
        assert run_cli("drill").code == lost, what
        restore = run_cli("restore", "--target", "files", "--from", "nfs", "--into", str(bak_home / f"back-{what}"))
        assert restore.code == lost, (what, restore.envelope)
        repair()
        assert run_cli("verify").code == 0, what
    assert run_cli("drill").code == 0


def test_each_damage_of_a_dump_is_caught(bak_home, postgres, monkeypatch):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}' CREATEDB; END IF; END$$")
    postgres.psql("ALTER ROLE backup CREATEDB")
    postgres.psql("DROP DATABASE IF EXISTS dumped WITH (FORCE)")
    postgres.psql("CREATE DATABASE dumped OWNER backup")
    postgres.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 5000) g; "
                  "ALTER TABLE t OWNER TO backup", db="dumped")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"here": {"kind": "local", "path": str(bak_home / "here")}},
        "targets": [{"name": "dumped", "method": "pg_dump", "destinations": ["here"],
                     "pg_dump": pg_options(postgres, database="dumped", sanity_queries=[])}]})
    name = run_cli("create").envelope["result"]["targets"][0]["name"]
    dump = bak_home / "here" / "postgresql" / "dumped" / name
    sidecar = dump.with_name(name + ".sha256")
    original, recorded = dump.read_bytes(), sidecar.read_text()
    flipped = bytearray(original)
    flipped[len(original) // 2] ^= 1
    damages = [("flipped byte", lambda: dump.write_bytes(bytes(flipped))),
               ("truncation", lambda: dump.write_bytes(original[:-500])),
               ("re-written sidecar", lambda: sidecar.write_text("0" * 64 + f"  {name}\n"))]
    for what, damage in damages:
        damage()
        verify = run_cli("verify")
        assert verify.code == 1 and name in verify.envelope["errors"][0]["message"], what
        assert run_cli("drill").code == 1, what
        assert run_cli("restore", "--target", "dumped", "--into", "dumped_back").code == 1, what
        assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname = 'dumped_back'").strip() == "0"
        dump.write_bytes(original)
        sidecar.write_text(recorded)
        assert run_cli("verify").code == 0, what
    assert run_cli("drill").code == 0
    postgres.psql("DROP DATABASE dumped WITH (FORCE)")
