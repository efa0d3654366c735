"""Never lose, clobber or leak data (issue 12): each scenario with real processes, signals and files."""

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bak import naming
from conftest import bak_subprocess, kill_tree, need, run_cli, write_config
from test_files import files_config, make_tree
from test_pg import PASSWORD, pg_options


def tree_of(root: Path) -> dict[bytes, tuple]:
    """Every entry under root, by raw name: type, mode, size, content hash or link target."""
    found = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, os.fsencode(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(Path(os.fsdecode(path)).read_bytes()).hexdigest())
    return found


def processes_naming(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- 1. targets never meet ---------------------------------------------------------------------
def pg_lab(home, server, targets, dests=None):
    dests = dests or {"nfs": {"kind": "local", "path": str(home / "nfs")}}
    write_config(home / "config.yaml", {
        "version": 1, "destinations": dests, "policies": {"one": {"keep_last": 1}},
        "targets": [{"name": name, "method": "pg_dump", "destinations": list(dests), "policy": "one", "interval": "6h",
                     "pg_dump": pg_options(server, database=db, sanity_queries=[])} for name, db in targets]})


@pytest.fixture
def two_dbs(bak_home, postgres, monkeypatch):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}' CREATEDB; END IF; END$$")
    for db in ("big", "big-2"):
        postgres.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        postgres.psql(f'CREATE DATABASE "{db}" OWNER backup')
        postgres.psql(f"CREATE TABLE t AS SELECT g, '{db}' AS src FROM generate_series(1, 100) g; GRANT SELECT ON t TO backup", db=db)
    yield postgres
    for db in ("big", "big-2"):
        postgres.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_targets_with_one_database_name_or_a_prefix_never_meet(bak_home, two_dbs):
    # srv1 and srv2 dump a database named "big" (two servers in real life); "big-2" is a prefix match of "big".
    pg_lab(bak_home, two_dbs, [("srv1", "big"), ("srv2", "big"), ("prefix", "big-2")])
    assert run_cli("config", "check").code == 0
    for target in ("srv1", "srv2", "srv2", "prefix"):
        assert run_cli("create", "--target", target).code == 0
        time.sleep(1.05)
    folder = bak_home / "nfs" / "postgresql"
    assert sorted(p.name for p in folder.iterdir()) == ["prefix", "srv1", "srv2"]
    srv1 = sorted(p.name for p in (folder / "srv1").glob("*.dump"))
    pruned = run_cli("prune", "--target", "srv2")
    assert pruned.code == 0, pruned.envelope
    assert len(list((folder / "srv2").glob("*.dump"))) == 1
    assert sorted(p.name for p in (folder / "srv1").glob("*.dump")) == srv1 and len(list((folder / "prefix").glob("*.dump"))) == 1
    status = {t["target"]: t for t in run_cli("status").envelope["result"]["targets"]}
    newest_srv2 = next((folder / "srv2").glob("*.dump")).name
    assert status["srv2"]["newest"]["name"] == newest_srv2 and status["srv1"]["newest"]["name"] == srv1[-1]
    restored = run_cli("restore", "--target", "srv2", "--dry-run")
    assert restored.envelope["result"]["backup"] == newest_srv2
    listed = run_cli("list", "--target", "prefix").envelope["result"]
    assert [b["name"] for b in listed["backups"]] == [p.name for p in (folder / "prefix").glob("*.dump")]


def test_a_live_partial_of_one_target_is_never_touched_by_another(bak_home):
    need("rsync")
    for name in ("big", "big-2"):
        make_tree(bak_home / f"src-{name}", files=40, size=32768)
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"nfs": {"kind": "local", "path": str(bak_home / "nfs")}},
        "targets": [{"name": name, "method": "rsync", "destinations": ["nfs"], "interval": "1d",
                     "rsync": {"source": str(bak_home / f"src-{name}"), "bwlimit_kib": 150 if name == "big" else 0}} for name in ("big", "big-2")]})
    slow = bak_subprocess("create", "--target", "big", "--json")
    try:
        partial = wait_for(lambda: list((bak_home / "nfs" / "rsync" / "big").glob("*.partial")), what="big's partial")[0]
        other = run_cli("create", "--target", "big-2")
        assert other.code == 0, other.envelope
        assert partial.exists()
        assert slow.wait(timeout=60) == 0
    finally:
        kill_tree(slow.pid)
    assert [p.name for p in (bak_home / "nfs" / "rsync" / "big").iterdir() if p.is_dir()] == [partial.name[:-8]]


def test_flat_names_of_older_versions_count_only_for_their_sole_owner(bak_home, two_dbs):
    """A store written by bak 0.1 (files side by side in postgresql/) keeps working."""
    folder = bak_home / "nfs" / "postgresql"
    folder.mkdir(parents=True)
    old = naming.pg_dump_name("big", datetime.now() - timedelta(days=2))
    (folder / old).write_bytes(b"an old dump")
    (folder / f"{old}.sha256").write_text(f"{hashlib.sha256(b'an old dump').hexdigest()}  {old}\n")
    pg_lab(bak_home, two_dbs, [("srv1", "big")])
    listed = run_cli("list").envelope["result"]
    assert [b["name"] for b in listed["backups"]] == [old] and listed["foreign"] == []
    assert run_cli("verify", "--target", "srv1").envelope["result"]["checked"][0]["checksum"] == "ok"
    # Two targets that would both make `pg-big-...`: the old file is nobody's, listed as foreign, never pruned.
    pg_lab(bak_home, two_dbs, [("srv1", "big"), ("srv2", "big")])
    listed = run_cli("list").envelope["result"]
    assert listed["backups"] == [] and {f["name"] for f in listed["foreign"]} == {old, f"{old}.sha256"}
    assert run_cli("create", "--target", "srv1").code == 0
    assert run_cli("prune", "--force").code == 0
    assert (folder / old).exists()


# --- 2 and 3. forced restores keep what they replace, apart ------------------------------------
def test_force_into_another_folder_keeps_what_no_backup_holds_and_excluded_paths(bak_home):
    source, dest, other = bak_home / "src", bak_home / "dest", bak_home / "elsewhere"
    make_tree(source, files=10)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=["*.tmp", "videos"])
    assert run_cli("create").code == 0
    other.mkdir()
    (other / "only-here.txt").write_text("in no backup")
    forced = run_cli("restore", "--target", "files", "--into", str(other), "--force")
    assert forced.code == 0, forced.envelope
    assert not (other / "only-here.txt").exists()
    _, _, path = forced.envelope["result"]["safety_snapshot"].partition(":")
    assert (dest / path / "only-here.txt").read_text() == "in no backup"
    # Into the original: excluded paths are neither in the backup nor removed by the restore.
    (source / "videos").mkdir()
    (source / "videos" / "film.mkv").write_bytes(b"big video")
    (source / "draft.tmp").write_text("scratch")
    time.sleep(1.05)
    again = run_cli("restore", "--target", "files", "--into", str(source), "--force")
    assert again.code == 0, again.envelope
    assert (source / "videos" / "film.mkv").read_bytes() == b"big video" and (source / "draft.tmp").exists()
    listed = run_cli("list").envelope["result"]
    assert len(listed["safety_copies"]) == 2 and len(listed["backups"]) == 1


def test_safety_copies_are_never_picked_and_a_failed_force_changes_nothing(bak_home, postgres, monkeypatch):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}' CREATEDB; END IF; END$$")
    postgres.psql("DROP DATABASE IF EXISTS shop WITH (FORCE)")
    postgres.psql("CREATE DATABASE shop OWNER backup")
    postgres.psql("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 10); GRANT SELECT ON t TO backup; "
                  "ALTER TABLE t OWNER TO backup", db="shop")
    pg_lab(bak_home, postgres, [("shop", "shop")])
    created = run_cli("create")
    assert created.code == 0, created.envelope
    backup = created.envelope["result"]["targets"][0]["name"]
    postgres.psql("INSERT INTO t VALUES (99)", db="shop")
    time.sleep(1.05)
    forced = run_cli("restore", "--target", "shop", "--into", "shop", "--force")
    assert forced.code == 0, forced.envelope
    assert postgres.psql("SELECT count(*) FROM t", db="shop").strip() == "10"
    assert forced.envelope["result"]["safety_dump"].startswith("nfs:safety/shop/pg-shop-")
    # The next default restore and drill take the backup, never the safety dump of the replaced state.
    assert run_cli("restore", "--target", "shop", "--dry-run").envelope["result"]["backup"] == backup
    drill = run_cli("drill")
    assert drill.code == 0 and drill.envelope["result"]["drills"][0]["backup"] == backup
    # A forced restore that fails (a damaged dump) leaves the database as it was and says where the safety dump is.
    dump = bak_home / "nfs" / "postgresql" / "shop" / backup
    dump.write_bytes(dump.read_bytes()[:-200])
    postgres.psql("INSERT INTO t VALUES (100)", db="shop")
    failed = run_cli("restore", "--target", "shop", "--into", "shop", "--force")
    assert failed.code == 1
    assert postgres.psql("SELECT count(*) FROM t", db="shop").strip() == "11"
    assert "safety dump" in failed.envelope["errors"][0]["hint"] and "was not changed" in failed.envelope["errors"][0]["hint"]
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'bak_incoming_%'").strip() == "0"
    assert len(run_cli("list").envelope["result"]["safety_copies"]) == 2, (failed.envelope, run_cli("list").envelope)
    # Only an explicit rule removes them.
    assert run_cli("prune", "--force").code == 0
    assert len(run_cli("list").envelope["result"]["safety_copies"]) == 2
    plan = run_cli("prune", "--force", "--safety-older-than", "1m", "--dry-run")
    assert plan.code == 0 and plan.envelope["result"]["targets"][0]["stores"][0]["safety_copies"] == []
    postgres.psql("DROP DATABASE shop WITH (FORCE)")


# --- 4. real times, names never reused ---------------------------------------------------------
def test_a_daily_name_carries_its_real_time_and_no_name_is_reused(bak_home):
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=5)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)})
    data = __import__("yaml").safe_load((bak_home / "config.yaml").read_text())
    data["targets"][0]["interval"] = "6h"
    data["policies"]["p"] = {"keep_last": 1}
    write_config(bak_home / "config.yaml", data)
    before = datetime.now().replace(microsecond=0)
    first = run_cli("create").envelope["result"]["targets"][0]["name"]
    assert first == naming.rsync_name("files", before)  # the seed's daily name
    status = run_cli("status").envelope["result"]["targets"][0]
    assert status["state"] == "OK" and abs(datetime.fromisoformat(status["newest"]["when"]) - before) < timedelta(seconds=5)
    time.sleep(1.05)
    second = run_cli("create").envelope["result"]["targets"][0]["name"]
    assert second.startswith(first + "_")
    assert run_cli("prune").code == 0
    folder = dest / "rsync" / "files"
    assert not (folder / first).exists() and (folder / second).exists()
    time.sleep(1.05)
    third = run_cli("create").envelope["result"]["targets"][0]["name"]
    assert third not in (first, second)
    decisions = run_cli("prune", "--dry-run").envelope["result"]["targets"][0]["stores"][0]["decisions"]
    assert decisions[0]["name"] == third and decisions[0]["keep"]


# --- 5. orphans of a killed run -----------------------------------------------------------------
def test_sigkill_leaves_no_child_writing_and_a_live_writer_is_refused(bak_home):
    need("rsync", "setpriv")
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=60, size=65536)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, bwlimit_kib=500)
    proc = bak_subprocess("create", "--json")
    folder = dest / "rsync" / "files"
    partial = wait_for(lambda: list(folder.glob("*.partial")), what="the partial")[0]
    wait_for(lambda: processes_naming(str(partial)), what="rsync writing the partial")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not processes_naming(str(partial)), timeout=3, what="no process left writing the partial")
    # Something still writing there (an orphan of another kind): the next run touches nothing, names it.
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(partial) + "/"])
    try:
        refused = run_cli("create")
        assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "partial_in_use"
        assert str(writer.pid) in refused.envelope["errors"][0]["message"]
        assert partial.exists()
    finally:
        writer.kill()
        writer.wait()
    resumed = run_cli("create")
    assert resumed.code == 0, resumed.envelope
    assert resumed.envelope["result"]["targets"][0]["copies"][0]["resumed"] is True


def test_parallel_rsyncs_stop_with_bak_and_the_next_run_resumes(bak_home):
    """A 2nd snapshot made by one rsync per core: Ctrl-C stops every one of them (bak exits 130), SIGKILL
    too (their orphan guard); the next run clears what they left and makes a snapshot that verifies."""
    need("rsync", "setpriv")
    source, dest = bak_home / "src", bak_home / "dest"
    big = [source / f"part{top}" / "big.img" for top in range(2)]
    for path in big:
        path.parent.mkdir(parents=True)
        (path.parent / "small.txt").write_text(path.parent.name)
        with open(path, "wb") as handle:
            handle.truncate(512 << 20)  # sparse here, 512 MiB written in the store: each rsync has work
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=[], parallel=2)
    assert run_cli("create").code == 0
    folder = dest / "rsync" / "files"
    for stop in (signal.SIGINT, signal.SIGKILL):
        time.sleep(1.05)
        for path in big:
            os.utime(path)  # changed: copied again, not linked
        left = set(folder.glob("*.partial"))
        # Ctrl-C's default action, whatever this run inherited (a job started with `&` by a script ignores SIGINT).
        proc = bak_subprocess("create", "--json", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        partial = wait_for(lambda: list(set(folder.glob("*.partial")) - left), what="the partial")[0]
        wait_for(lambda: [pid for pid in processes_naming(str(partial)) if b"--files-from=-" in
                          Path(f"/proc/{pid}/cmdline").read_bytes()], what="the parallel rsyncs")
        proc.send_signal(stop)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == (130 if stop == signal.SIGINT else -signal.SIGKILL), out
        if stop == signal.SIGINT:  # stopped, not waited for: the copies were cut short
            copied = [partial / path.relative_to(source) for path in big]
            assert sum(path.stat().st_size for path in copied if path.exists()) < 2 * (512 << 20)
        wait_for(lambda: not processes_naming(str(partial)), timeout=5, what="no rsync left writing the partial")
        assert list(folder.glob("*.partial")) == [partial]  # the run before's partial was cleared at the start
    time.sleep(1.05)
    last = run_cli("create")
    assert last.code == 0, last.envelope
    copy = last.envelope["result"]["targets"][0]["copies"][0]
    assert copy["rsyncs"] == 2 and copy["files"] == 4
    assert not list(folder.glob("*.partial")) and run_cli("verify").code == 0


# --- 6. symlinks never lead out ------------------------------------------------------------------
def test_symlinks_never_lead_out_of_the_store_or_the_restore_target(bak_home):
    source, dest, outside = bak_home / "src", bak_home / "dest", bak_home / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the backup")
    (outside / "secret.txt").chmod(0o600)
    make_tree(source, files=5)
    os.symlink(outside, source / "link")
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)})
    assert run_cli("create").code == 0
    folder = dest / "rsync" / "files"
    planted = folder / naming.rsync_name("files", datetime.now() + timedelta(minutes=1), with_time=True)
    os.symlink(outside, planted)
    listed = run_cli("list").envelope["result"]
    assert planted.name not in [b["name"] for b in listed["backups"]]
    assert {"store": "nfs", "folder": "rsync/files", "name": planted.name} in listed["foreign"]
    verified = run_cli("verify", "--all-backups")
    assert verified.code == 0 and len(verified.envelope["result"]["checked"]) == 1
    through = run_cli("restore", "--target", "files", "--file", "link/secret.txt", "--into", str(bak_home / "r1"))
    assert through.code == 3 and through.envelope["errors"][0]["code"] == "symlink_in_path"
    assert not (bak_home / "r1").exists()
    # A live tree whose folder became a link: restoring one file there must not write through it.
    live = bak_home / "live"
    live.mkdir()
    os.symlink(outside, live / "dir0")
    into = run_cli("restore", "--target", "files", "--file", "dir0/file0.txt", "--into", str(live), "--force")
    assert into.code == 3 and into.envelope["errors"][0]["code"] == "symlink_in_path"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    # A target folder that is itself a link is refused, not followed.
    planted.unlink()
    (dest / "rsync" / "moved").mkdir()
    os.rename(folder, dest / "rsync" / "moved" / "files")
    os.symlink(dest / "rsync" / "moved" / "files", folder)
    linked = run_cli("list")
    assert linked.code == 3 and linked.envelope["errors"][0]["code"] == "symlink_in_store"


# --- 7. clock skew -------------------------------------------------------------------------------
def test_a_backup_dated_in_the_future_is_a_problem_never_the_newest(bak_home):
    folder = bak_home / "dest" / "postgresql" / "db"
    folder.mkdir(parents=True)
    now = datetime.now()
    names = [naming.pg_dump_name("app", when) for when in (now - timedelta(hours=2), now - timedelta(hours=30),
                                                            now + timedelta(days=200))]
    for name in names:
        (folder / name).write_bytes(b"dump")
        (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(b'dump').hexdigest()}  {name}\n")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"here": {"kind": "local", "path": str(bak_home / "dest")}},
        "policies": {"one": {"keep_last": 1}},
        "targets": [{"name": "db", "method": "pg_dump", "destinations": ["here"], "policy": "one", "interval": "1d",
                     "pg_dump": {"database": "app"}}]})
    status = run_cli("status")
    entry = status.envelope["result"]["targets"][0]
    assert status.code == 1 and entry["newest"]["name"] == names[0] and entry["newest"]["age_h"] > 0
    assert any("in the future" in p and names[2] in p for p in entry["problems"])
    refused = run_cli("prune")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "backup_in_future"
    assert names[2] in refused.envelope["errors"][0]["message"]
    assert all((folder / n).exists() for n in names)
    assert run_cli("prune", "--force").code == 0


# --- 8. a full disk at the sidecar ---------------------------------------------------------------
def test_a_disk_full_at_the_sidecar_leaves_no_final_name_and_no_sidecar_partial(tiny_disk):
    from bak.stores.fanout import FanOut
    from bak.stores.local import LocalStore

    store = LocalStore("tiny", str(tiny_disk))
    (tiny_disk / "postgresql").mkdir()
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    fan = FanOut([store], "postgresql", "pg-app-2026-11-30_120000.dump")
    fan.write(os.urandom(free))  # fills every block: the data fits, its .sha256 does not
    result = fan.commit()
    assert not result.ok and result.copies[0].error["code"] == "disk_full"
    assert list((tiny_disk / "postgresql").iterdir()) == []


# --- 9. any name, any locale ---------------------------------------------------------------------
def odd_tree(root: Path) -> None:
    root.mkdir()
    for name in ("café.txt", "new\nline", "tab\there", "back\\#012slash", "日本語", "a -> b", "spaces  in name "):
        (root / name).write_text(name)
    (root / os.fsdecode(b"latin1-\xe9.txt")).write_text("not utf-8")
    (root / "empty").mkdir()
    os.symlink("café.txt", root / "link -> café")
    (root / "key").write_text("k")
    (root / "key").chmod(0o600)


@pytest.mark.parametrize("where", ["local-C-locale", "ssh-to-ssh"])
def test_any_file_name_backs_up_and_restores_exactly(bak_home, sshd, where):
    need("rsync")
    source, dest = bak_home / "src", bak_home / "dest"
    odd_tree(source)
    if where == "ssh-to-ssh":
        known = sshd.trust(bak_home / "known_hosts")
        files_config(bak_home, source=source, dest={"kind": "ssh", "host": "box", "path": str(dest)}, host="box",
                     hosts={"box": sshd.host_config(known)}, excludes=[])
        run = lambda *args: run_cli(*args)  # noqa: E731
    else:
        files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=[])
        env = {"LC_ALL": "C", "LANG": "C", "BAK_STATE_DIR": os.environ["BAK_STATE_DIR"],
               "BAK_CONFIG": os.environ["BAK_CONFIG"]}

        def run(*args):
            proc = bak_subprocess(*args, "--json", env=env)
            out, err = proc.communicate(timeout=120)
            assert b"Traceback" not in err, err.decode()
            return type("R", (), {"code": proc.returncode, "stdout": out, "__repr__": lambda self: out.decode()[-3000:]})()
    created = run("create")
    assert created.code == 0, created
    assert run("verify").code == 0
    assert run("restore", "--target", "files", "--into", str(bak_home / "back")).code == 0
    assert tree_of(bak_home / "back") == tree_of(source)
    assert run("drill").code == 0


# --- 10. secrets -------------------------------------------------------------------------------------
def test_no_secret_on_disk_or_in_a_child_environment_even_after_sigkill(bak_home, postgres, sshd, monkeypatch):
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                  f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}'; END IF; END$$")
    postgres.psql("DROP DATABASE IF EXISTS slow WITH (FORCE)")
    postgres.psql("CREATE DATABASE slow")
    postgres.psql("CREATE TABLE t AS SELECT g, repeat(md5(g::text), 20) AS pad FROM generate_series(1, 300000) g; "
                  "GRANT SELECT ON t TO backup", db="slow")
    known = sshd.trust(bak_home / "known_hosts")
    for host in ("local", "db"):
        write_config(bak_home / "config.yaml", {
            "version": 1, "hosts": {"db": sshd.host_config(known)},
            "destinations": {"nfs": {"kind": "local", "path": str(bak_home / "nfs")}},
            "targets": [{"name": "slow", "method": "pg_dump", "host": host, "destinations": ["nfs"],
                         "pg_dump": pg_options(postgres, database="slow", format="plain_gz")}]})
        proc = bak_subprocess("create", "--json")
        ours = f"-p\0{postgres.port}\0"  # this session's server: other runs on the machine dump elsewhere
        dumper = wait_for(lambda: [p for p in processes_naming(ours) if comm(p) == "pg_dump"], what="pg_dump running")[0]
        environ = Path(f"/proc/{dumper}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith(b"BAK_TEST_PG_PASSWORD=") for v in environ)
        passfile = next(v for v in environ if v.startswith(b"PGPASSFILE=")).split(b"=", 1)[1].decode()
        if host == "local":
            assert passfile.startswith("/dev/fd/")  # an anonymous memory file: never on a disk
        else:
            assert Path(passfile).read_text().endswith(f":{PASSWORD}\n")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if host != "local":
            wait_for(lambda: not Path(passfile).parent.exists(), timeout=10, what="the remote passfile removed")
        wait_for(lambda: not [p for p in processes_naming(ours) if comm(p) == "pg_dump"], timeout=10,
                 what="no pg_dump left")
    # bak's private temp files (here and on the SSH host), shared memory and the lab: no copy of the password.
    temp = Path(__import__("tempfile").gettempdir())
    for path in [*Path("/tmp").glob("bak-secret*/**/*"), *temp.glob("bak-secret*/**/*"), *Path("/dev/shm").rglob("*"),
                 *bak_home.rglob("*")]:
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20:
                assert PASSWORD.encode() not in path.read_bytes(), path
        except OSError:
            pass
    postgres.psql("DROP DATABASE slow WITH (FORCE)")


# --- 11. host keys on rsync's own ssh ------------------------------------------------------------
def test_rsyncs_ssh_trusts_only_bak_known_hosts_and_a_refusal_is_not_retried(bak_home, sshd):
    need("rsync", "ssh")
    from bak import config as bak_config
    from bak.errors import HostKeyUnknown
    from bak.methods.base import Context
    from bak.methods.rsync import raise_for_exit, rsync_argv, run_rsync, ssh_transport
    from bak.run import Hosts

    empty = bak_home / "known_hosts"
    empty.write_text("")
    host = bak_config.Host(name="box", address="127.0.0.1", port=sshd.port, user=sshd.user, key_file=str(sshd.client_key))
    transport = ssh_transport(host, empty)
    effective = subprocess.run([*__import__("shlex").split(transport), "-G", "127.0.0.1"], capture_output=True, text=True)
    assert "globalknownhostsfile /dev/null" in effective.stdout and f"userknownhostsfile {empty}" in effective.stdout
    config = bak_config.from_data({"version": 1})
    ctx = Context(config, Hosts(config), None, datetime.now())
    (bak_home / "src").mkdir()
    attempts = []
    started = time.monotonic()
    code, _, stderr = run_rsync(ctx.hosts.runner("local"), rsync_argv(str(bak_home / "src") + "/",
                                f"{sshd.user}@127.0.0.1:{bak_home / 'dst'}/", ssh=transport), 60, attempts.append, 32)
    # rsync exits 255 (ssh's own status) or 12 (it saw the stream close first): a race inside rsync, which the
    # `--` before its paths makes more frequent; either way the refusal is not retried and is named as such.
    assert code in (12, 255) and "Host key verification failed" in stderr, (code, stderr)
    assert attempts == [] and time.monotonic() - started < 5
    with pytest.raises(HostKeyUnknown) as refused:
        raise_for_exit(code, stderr, "box", ctx, "files")
    assert refused.value.exit_code == 3


# --- 12. modes of folders bak did not create -----------------------------------------------------
def test_the_wizard_never_changes_the_mode_of_an_existing_folder(bak_home):
    shared = bak_home / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    answers = bak_home / "answers.yaml"
    answers.write_text("destinations:\n  here: {kind: local, path: /srv/backups, medium: ssd}\ncopies: [here]\n"
                       "folders:\n  - {name: docs, host: local, source: /home/me/docs}\n")
    result = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(shared / "new" / "config.yaml"))
    assert result.code == 0, result.envelope
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "new").stat().st_mode) == 0o700
    again = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(shared / "config.yaml"))
    assert again.code == 0 and stat.S_IMODE(shared.stat().st_mode) == 0o1777
