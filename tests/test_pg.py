"""PostgreSQL end to end against a real cluster: dump, verify, restore beside, drill, faults, secrets."""

import shutil
import subprocess
import threading
import time

import pytest

from bak import naming
from conftest import _make_postgres, run_cli, write_config

PASSWORD = "pg-Backup-s3cret"
TABLES = ["public.users", "public.orders", "shop.items", "public.hashes"]


@pytest.fixture(scope="module")
def pg(postgres):
    postgres.psql("DROP DATABASE IF EXISTS app")
    postgres.psql("CREATE DATABASE app")
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}' CREATEDB; END IF; END$$")
    postgres.psql("""
        CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text);
        INSERT INTO users (name, email) SELECT 'user ' || g, 'u' || g || '@example.invalid' FROM generate_series(1, 5000) g;
        CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int REFERENCES users(id), total numeric(10,2), note text);
        INSERT INTO orders (user_id, total, note) SELECT 1 + g % 5000, g * 1.5, repeat('x', g % 50) FROM generate_series(1, 20000) g;
        CREATE SCHEMA shop;
        CREATE TABLE shop.items (sku text PRIMARY KEY, "Weird|Name" text);
        INSERT INTO shop.items VALUES ('a', 'pipe|inside'), ('b', E'tab\\there'), ('c', NULL);
        CREATE TABLE hashes AS SELECT g AS id, md5(g::text) || md5((g * 31)::text) AS h FROM generate_series(1, 60000) g;
        GRANT USAGE ON SCHEMA shop TO backup;
        GRANT SELECT ON ALL TABLES IN SCHEMA public, shop TO backup;
        GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO backup;
    """, db="app")
    return postgres


def table_digest(server, db):
    return {t: server.psql(f"SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {t} x",
                           db=db).strip() for t in TABLES}


def pg_options(server, **extra):
    return {"database": "app", "address": "127.0.0.1", "port": server.port, "user": "backup",
            "password": {"env": "BAK_TEST_PG_PASSWORD"}, "bin_dir": str(server.bindir),
            "sanity_queries": ["SELECT 1 FROM users WHERE id = 1"], **extra}


def lab_config(home, server, *, host="local", hosts=None, dests=None, **extra):
    dests = dests or {"local": {"kind": "local", "path": str(home / "local")},
                      "nfs": {"kind": "local", "path": str(home / "nfs")}}
    data = {"version": 1, "destinations": dests, "policies": {"pg": {"keep_daily": 7}},
            "targets": [{"name": "pg-app", "method": "pg_dump", "host": host, "destinations": list(dests),
                         "policy": "pg", "interval": "6h", "pg_dump": pg_options(server, **extra)}]}
    if hosts:
        data["hosts"] = hosts
    return write_config(home / "config.yaml", data)


@pytest.fixture
def lab(bak_home, pg, monkeypatch):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    lab_config(bak_home, pg)
    return bak_home


def test_round_trip_dump_verify_restore_beside_drill(lab, pg):
    created = run_cli("create", "--target", "pg-app")
    assert created.code == 0, created.envelope
    entry = created.envelope["result"]["targets"][0]
    name = entry["name"]
    assert naming.parse(name).kind == "pg_dump" and name.endswith(".dump")
    assert [c["ok"] for c in entry["copies"]] == [True, True]
    for root in ("local", "nfs"):
        folder = lab / root / "postgresql" / "pg-app"
        assert {p.name for p in folder.iterdir()} == {name, f"{name}.sha256", f"{name}.meta.json"}
        assert subprocess.run(["sha256sum", "-c", f"{name}.sha256"], cwd=folder, capture_output=True).returncode == 0
        assert (folder / name).stat().st_mode & 0o777 == 0o600
    assert (lab / "local" / "postgresql" / "pg-app" / name).read_bytes() == (lab / "nfs" / "postgresql" / "pg-app" / name).read_bytes()
    import json

    meta = json.loads((lab / "local" / "postgresql" / "pg-app" / f"{name}.meta.json").read_text())
    assert meta["row_counts"] == {"public.orders": 20000, "public.users": 5000, "shop.items": 3, "public.hashes": 60000}
    assert meta["server_version"].startswith("15") and meta["snapshot_consistent"]

    verified = run_cli("verify", "--target", "pg-app")
    assert verified.code == 0, verified.envelope
    assert [(r["checksum"], r["format"]) for r in verified.envelope["result"]["checked"]] == [("ok", "ok")] * 2

    as_owner = run_cli("restore", "--target", "pg-app")
    assert as_owner.code == 1 and "--no-owner" in as_owner.envelope["errors"][0]["hint"]
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'app_restored_%'").strip() == "0"

    restored = run_cli("restore", "--target", "pg-app", "--no-owner")
    assert restored.code == 0, restored.envelope
    new_db = restored.envelope["result"]["database"]
    assert new_db.startswith("app_restored_") and restored.envelope["result"]["replaced"] is False
    assert table_digest(pg, new_db) == table_digest(pg, "app")

    drilled = run_cli("pg", "drill", "--target", "pg-app")
    assert drilled.code == 0, drilled.envelope
    drill = drilled.envelope["result"]["drills"][0]
    assert drill["passed"] and drill["restore_duration_s"] > 0
    assert {c["check"] for c in drill["checks"]} == {"row counts", "SELECT 1 FROM users WHERE id = 1"}
    assert pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{drill['scratch_database']}'").strip() == "0"

    kinds = [(o["kind"], o["status"]) for o in run_cli("log", "--target", "pg-app").envelope["result"]["operations"]]
    assert kinds == [("drill", "ok"), ("restore", "ok"), ("restore", "failed"), ("verify", "ok"), ("verify", "ok"),
                     ("create", "ok")]
    pg.psql(f"DROP DATABASE {new_db}")


def test_restore_refuses_to_overwrite_then_force_takes_a_safety_dump(lab, pg):
    assert run_cli("create", "--target", "pg-app").code == 0
    pg.psql("DROP DATABASE IF EXISTS scratch_target")
    pg.psql("CREATE DATABASE scratch_target OWNER backup")
    pg.psql("CREATE TABLE keepme (v int); INSERT INTO keepme VALUES (42)", db="scratch_target")

    refused = run_cli("restore", "--target", "pg-app", "--into", "scratch_target")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "would_overwrite"
    assert pg.psql("SELECT v FROM keepme", db="scratch_target").strip() == "42"

    unreadable = run_cli("restore", "--target", "pg-app", "--into", "scratch_target", "--force", "--no-owner")
    assert unreadable.code == 3 and unreadable.envelope["errors"][0]["code"] == "safety_dump_failed"
    assert pg.psql("SELECT v FROM keepme", db="scratch_target").strip() == "42"
    pg.psql("GRANT SELECT ON keepme TO backup", db="scratch_target")

    forced = run_cli("restore", "--target", "pg-app", "--into", "scratch_target", "--force", "--no-owner")
    assert forced.code == 0, forced.envelope
    safety = forced.envelope["result"]["safety_dump"]
    store, _, path = safety.partition(":")
    assert store == "local" and path.startswith("safety/pg-app/pg-scratch_target-")
    assert (lab / "local" / f"{path}.protected").exists() and (lab / "local" / f"{path}.sha256").exists()
    assert table_digest(pg, "scratch_target") == table_digest(pg, "app")
    pg.psql("DROP DATABASE scratch_target WITH (FORCE)")


def test_plain_sql_gz_format_round_trip(bak_home, pg, monkeypatch):
    # Plain SQL carries its owners: it is restored by a superuser.
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", pg.password)
    lab_config(bak_home, pg, format="plain_gz", user="postgres")
    created = run_cli("create")
    assert created.code == 0, created.envelope
    name = created.envelope["result"]["targets"][0]["name"]
    assert name.endswith(".sql.gz")
    assert subprocess.run(["gzip", "-t", str(bak_home / "local" / "postgresql" / "pg-app" / name)]).returncode == 0
    assert run_cli("verify").code == 0
    assert run_cli("restore", "--target", "pg-app", "--no-owner").code == 2
    restored = run_cli("restore", "--target", "pg-app")
    assert restored.code == 0, restored.envelope
    assert table_digest(pg, restored.envelope["result"]["database"]) == table_digest(pg, "app")
    pg.psql(f"DROP DATABASE {restored.envelope['result']['database']}")


def test_parallel_restore_with_jobs(lab, pg):
    assert run_cli("create").code == 0
    restored = run_cli("pg", "restore", "--target", "pg-app", "--jobs", "2", "--into", "app_parallel", "--no-owner")
    assert restored.code == 0, restored.envelope
    assert table_digest(pg, "app_parallel") == table_digest(pg, "app")
    pg.psql("DROP DATABASE app_parallel")


def test_verify_catches_truncation_and_a_flipped_byte(lab, pg):
    assert run_cli("create").code == 0
    folder = lab / "local" / "postgresql" / "pg-app"
    name = next(p.name for p in folder.iterdir() if p.name.endswith(".dump"))
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) * 2 // 3])
    truncated = run_cli("verify", "--target", "pg-app")
    assert truncated.code == 1
    bad = [r for r in truncated.envelope["result"]["checked"] if not r["ok"]]
    assert [(r["store"], r["checksum"], r["format"]) for r in bad] == [("local", "mismatch", "failed")]

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(flipped))
    caught = run_cli("verify", "--target", "pg-app")
    assert caught.code == 1
    assert [r["checksum"] for r in caught.envelope["result"]["checked"] if not r["ok"]] == ["mismatch"]
    assert "sha256 mismatch" in caught.envelope["errors"][0]["message"]

    restore = run_cli("restore", "--target", "pg-app", "--from", "local", "--into", "from_corrupt")
    assert restore.code == 1
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'from_corrupt'").strip() == "0"


def test_wrong_password_is_a_clear_failure(bak_home, pg, monkeypatch):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", "not-the-password")
    lab_config(bak_home, pg)
    result = run_cli("create")
    assert result.code == 1
    assert result.envelope["errors"][0]["code"] == "pg_auth"
    assert not list((bak_home / "local").rglob("*.dump"))
    row = run_cli("log").envelope["result"]["operations"][0]
    assert row["status"] == "failed" and "pg_auth" in row["error_tail"]


def test_missing_database_is_a_clear_failure(lab, pg):
    lab_config(lab, pg, database="nope")
    result = run_cli("create")
    assert result.code == 1
    assert result.envelope["errors"][0]["code"] == "pg_no_database"


def test_unset_secret_env_var_is_bad_input(bak_home, pg, monkeypatch):
    monkeypatch.delenv("BAK_TEST_PG_PASSWORD", raising=False)
    lab_config(bak_home, pg)
    result = run_cli("create")
    assert result.code == 2 and "BAK_TEST_PG_PASSWORD" in result.envelope["errors"][0]["message"]


def test_first_dump_bigger_than_the_destination_is_refused_before_it_starts(bak_home, pg, monkeypatch, tiny_disk):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    lab_config(bak_home, pg, dests={"tiny": {"kind": "local", "path": str(tiny_disk)}})
    result = run_cli("create")
    assert result.code == 3
    assert result.envelope["errors"][0]["code"] == "no_space"
    assert not any(tiny_disk.rglob("*"))


def test_destination_filling_up_mid_dump_leaves_no_final_file(bak_home, pg, monkeypatch, tiny_disk):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    lab_config(bak_home, pg, dests={"tiny": {"kind": "local", "path": str(tiny_disk)}})
    folder = tiny_disk / "postgresql" / "pg-app"
    folder.mkdir(parents=True)
    small = folder / naming.pg_dump_name("app", __import__("datetime").datetime(2026, 1, 1))
    small.write_bytes(b"x" * 1000)  # a tiny previous dump (a complete one: with its sidecar) makes the precheck pass
    small.with_name(small.name + ".sha256").write_text(f"{__import__('hashlib').sha256(b'x' * 1000).hexdigest()}  {small.name}\n")
    result = run_cli("create")
    assert result.code == 1
    assert result.envelope["errors"][0]["code"] == "disk_full"
    assert sorted(p.name for p in folder.rglob("*") if not p.is_dir()) == [small.name, small.name + ".sha256"]


def test_password_never_appears_in_argv_output_journal_or_logs(lab, pg):
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for cmdline in __import__("pathlib").Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    seen.append(cmdline.read_bytes())
                except OSError:
                    pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outputs = [run_cli("create"), run_cli("verify"), run_cli("pg", "drill"), run_cli("log")]
    finally:
        stop.set()
        watcher.join()
    assert any(b"pg_dump" in c or b"psql" in c for c in seen), "the watcher saw the dump (or its snapshot session) running"
    assert not [c for c in seen if PASSWORD.encode() in c]
    for out in outputs:
        assert out.code == 0, out.envelope
        assert PASSWORD not in out.stdout and PASSWORD not in out.stderr
    journal = (lab / "state" / "journal.sqlite").read_bytes()
    assert PASSWORD.encode() not in journal
    for path in lab.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_dump_over_ssh_round_trip(bak_home, pg, sshd, monkeypatch):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    known = sshd.trust(bak_home / "known_hosts")
    lab_config(bak_home, pg, host="db", hosts={"db": sshd.host_config(known), "store": sshd.host_config(known)},
               dests={"nfs": {"kind": "ssh", "host": "store", "path": str(bak_home / "remote-nfs")},
                      "local": {"kind": "local", "path": str(bak_home / "local")}})
    created = run_cli("create")
    assert created.code == 0, created.envelope
    name = created.envelope["result"]["targets"][0]["name"]
    remote = bak_home / "remote-nfs" / "postgresql" / "pg-app"
    assert (remote / name).read_bytes() == (bak_home / "local" / "postgresql" / "pg-app" / name).read_bytes()
    assert run_cli("verify").code == 0
    restored = run_cli("restore", "--target", "pg-app", "--from", "nfs", "--no-owner")
    assert restored.code == 0, restored.envelope
    assert table_digest(pg, restored.envelope["result"]["database"]) == table_digest(pg, "app")
    assert run_cli("pg", "drill").code == 0
    pg.psql(f"DROP DATABASE {restored.envelope['result']['database']}")


def test_server_stopped_mid_dump_leaves_no_final_file(bak_home, monkeypatch):
    server = _make_postgres()
    try:
        server.psql("CREATE DATABASE app")
        server.psql(f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}'")
        server.psql("CREATE TABLE big AS SELECT g AS id, md5(g::text) || repeat(md5((g*7)::text), 8) AS payload "
                    "FROM generate_series(1, 600000) g; GRANT SELECT ON big TO backup", db="app")
        monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
        lab_config(bak_home, server)
        folder = bak_home / "local" / "postgresql" / "pg-app"

        def stop_when_writing():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                partial = list(folder.glob("*.partial")) if folder.exists() else []
                if partial and partial[0].stat().st_size > 0:
                    server.stop("immediate")
                    return
                time.sleep(0.005)

        stopper = threading.Thread(target=stop_when_writing)
        stopper.start()
        result = run_cli("create")
        stopper.join()
        assert result.code == 1, result.envelope
        assert not [p for p in folder.iterdir() if not p.name.endswith(".partial")] if folder.exists() else True
        assert not list((bak_home / "nfs").rglob("*.dump"))
        assert not list(folder.glob("*.dump"))
        row = run_cli("log").envelope["result"]["operations"][0]
        assert row["kind"] == "create" and row["status"] == "failed"
    finally:
        server.stop("immediate")
        shutil.rmtree(server.datadir.parent, ignore_errors=True)


def test_globals_are_kept_beside_the_dump_without_passwords_for_a_non_superuser(lab, pg):
    lab_config(lab, pg, globals=True)
    created = run_cli("create")
    assert created.code == 0, created.envelope
    name = created.envelope["result"]["targets"][0]["name"]
    roles = (lab / "local" / "postgresql" / "pg-app" / f"{name}.globals.sql").read_text()
    assert "CREATE ROLE backup" in roles and "PASSWORD" not in roles
    assert any("without their passwords" in w for w in created.envelope["warnings"])
    pruned = run_cli("prune", "--dry-run").envelope["result"]["targets"][0]["stores"][0]["decisions"]
    assert f"{name}.globals.sql" in next(d for d in pruned if d["name"] == name)["sidecars"]


def test_pgpass_reference_is_used_as_the_passfile(bak_home, pg):
    passfile = bak_home / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg.port}:*:backup:{PASSWORD}\n")
    passfile.chmod(0o600)
    lab_config(bak_home, pg, password={"pgpass": str(passfile)})
    assert run_cli("create").code == 0
    passfile.chmod(0o644)
    loose = run_cli("create")
    assert loose.code == 2 and "readable by others" in loose.envelope["errors"][0]["message"]


def test_doctor_checks_postgres_readiness_and_rights(lab, pg, monkeypatch):
    ok = run_cli("doctor")
    row = next(c for c in ok.envelope["result"]["checks"] if c["check"] == "postgresql")
    assert row["level"] == "ok" and "backup can dump app" in row["detail"]
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", "wrong")
    bad = run_cli("doctor")
    assert bad.code == 1
    row = next(c for c in bad.envelope["result"]["checks"] if c["check"] == "postgresql")
    assert row["level"] == "fail" and "password" in row["detail"] and "secret" in row["fix"]


def test_a_server_that_does_not_answer_is_one_code_everywhere(bak_home, monkeypatch):
    """pg_not_ready with its hint, whichever command meets the stopped server: dump, restore (dry run too),
    drill, dr drill."""
    server = _make_postgres()
    try:
        server.psql("CREATE DATABASE app")
        server.psql(f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}' CREATEDB")
        server.psql("CREATE TABLE t AS SELECT 1 AS id; GRANT SELECT ON t TO backup", db="app")
        monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
        lab_config(bak_home, server)
        assert run_cli("create").code == 0
        server.stop("fast")
        time.sleep(1.1)  # a new second: the next dump's name is free
        for argv in (["create"], ["restore", "-t", "pg-app", "--dry-run"], ["restore", "-t", "pg-app"],
                     ["pg", "restore", "-t", "pg-app"], ["drill"], ["pg", "drill"], ["dr", "drill"]):
            result = run_cli(*argv)
            assert result.code == 1, (argv, result.envelope)
            (error,) = [e for e in result.envelope["errors"] if e["code"] != "plan_gap"]
            assert error["code"] == "pg_not_ready" and error["where"] == "targets.pg-app", (argv, error)
            assert "pg_isready" in error["hint"] and f"127.0.0.1:{server.port}" in error["message"], (argv, error)
    finally:
        server.stop("immediate")
        shutil.rmtree(server.datadir.parent, ignore_errors=True)
