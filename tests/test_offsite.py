"""Off-site copies on restic against real servers on loopback: a REST server (rclone serve restic), an
S3-compatible one (moto) and SFTP through the test sshd. Every target type, bak sync, prune through
restic forget/prune, the rotating check, restore and drill from off-site, and the faults: a server
killed mid-upload, a wrong password, a live and a stale lock, a full disk behind the server."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from bak.stores.restic import ResticStore
from conftest import ResticServer, bak_subprocess, free_port, kill_tree, need, run_cli, write_config
from test_files import make_tree
from test_pg import pg  # noqa: F401  (the module fixture: a database with tables)

RESTIC_PASSWORD = "off-site restic password"


def secret(home: Path, name: str, value: str) -> str:
    path = home / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def offsite(home: Path, repository: str, **extra) -> dict:
    return {"kind": "restic", "repository": repository, "password": {"file": secret(home, "restic.pass", RESTIC_PASSWORD)},
            "offsite": True, **extra}


def tree_config(home: Path, dests: dict, *, targets=("files",), **top) -> Path:
    source = home / "src"
    if not source.exists():
        make_tree(source, files=12, size=4096)
        (source / "empty").mkdir()
        os.symlink("dir1/file1.txt", source / "link")
    data = {"version": 1, "destinations": dests, "policies": {"one": {"keep_last": 1}},
            "targets": [{"name": name, "method": "rsync", "destinations": list(dests), "interval": "1d",
                         "rsync": {"source": str(source), "excludes": ["*.tmp", ".cache"]}} for name in targets], **top}
    return write_config(home / "config.yaml", data)


def restic(repository: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """restic itself, to look at a repository independently of bak."""
    return subprocess.run(["restic", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RESTIC_REPOSITORY": repository, "RESTIC_PASSWORD": RESTIC_PASSWORD, **(env or {})})


def snapshots(repository: str, env: dict | None = None) -> list[dict]:
    out = restic(repository, "snapshots", "--json", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# --- folder snapshots on a REST server ---------------------------------------------------------------
def test_a_folder_snapshot_goes_off_site_and_comes_back(bak_home, rest_server, monkeypatch):
    repository = rest_server.repository("tree/")
    tree_config(bak_home, {"nfs": {"kind": "local", "path": str(bak_home / "nfs")},
                           "offsite": offsite(bak_home, repository)})
    before_init = run_cli("create")
    assert before_init.code == 1 and before_init.envelope["errors"][0]["code"] == "restic_no_repository"
    assert [c["ok"] for c in before_init.envelope["result"]["targets"][0]["copies"]] == [True, False]
    assert run_cli("destination", "init", "offsite").code == 0
    again = run_cli("destination", "init", "offsite")
    assert again.code == 3 and again.envelope["errors"][0]["code"] == "restic_repository_exists"

    created = run_cli("create")
    assert created.code == 0, created.envelope
    entry = created.envelope["result"]["targets"][0]
    copy = next(c for c in entry["copies"] if c["store"] == "offsite")
    assert copy["ok"] and copy["from"] == "nfs"
    # One restic snapshot of the finished folder and its manifest, as restic itself lists it.
    [snap] = [s for s in snapshots(repository) if "tree" in s["tags"]]
    assert f"path=rsync/files/{entry['name']}" in snap["tags"]
    assert sorted(Path(p).name for p in snap["paths"]) == [entry["name"], entry["name"] + ".manifest"]

    listed = run_cli("list", "--destination", "offsite").envelope["result"]["backups"]
    assert [b["name"] for b in listed] == [entry["name"]] and listed[0]["checksum"]
    verified = run_cli("verify")
    assert verified.code == 0, verified.envelope
    assert {r["store"] for r in verified.envelope["result"]["checked"]} == {"nfs", "offsite"}
    assert verified.envelope["result"]["repositories"][0]["ok"]

    drill = run_cli("drill", "--from", "offsite")
    assert drill.code == 0 and drill.envelope["result"]["drills"][0]["passed"], drill.envelope
    shutil.rmtree(bak_home / "nfs")  # the NFS box is gone: the off-site copy is what is left
    into = bak_home / "back"
    restored = run_cli("restore", "--target", "files", "--from", "offsite", "--into", str(into))
    assert restored.code == 0, restored.envelope
    assert (into / "dir1" / "file1.txt").read_bytes() == (bak_home / "src" / "dir1" / "file1.txt").read_bytes()
    assert os.readlink(into / "link") == "dir1/file1.txt" and (into / "empty").is_dir()
    assert not (into / "notes.tmp").exists()
    refused = run_cli("restore", "--target", "files", "--from", "offsite", "--into", str(into))
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "would_overwrite"
    (into / "dir1" / "file1.txt").write_text("changed after the backup")
    forced = run_cli("restore", "--target", "files", "--from", "offsite", "--into", str(into), "--force")
    assert forced.code == 0, forced.envelope
    assert (into / "dir1" / "file1.txt").read_bytes() == (bak_home / "src" / "dir1" / "file1.txt").read_bytes()
    safety = run_cli("list", "--destination", "offsite").envelope["result"]["safety_copies"]
    assert len(safety) == 1  # what --force replaced, kept in the repository, apart from the backups

    # The runbook's lines for the day bak is not there, run by a shell with restic alone: the source comes back.
    from bak.dr import manual

    monkeypatch.setattr(manual, "STAGE", str(bak_home / "stage"))
    [step] = run_cli("dr", "plan").envelope["result"]["steps"]
    assert step["source"]["destination"] == "offsite"
    shutil.rmtree(bak_home / "src")
    for line in step["commands"]["manual"]:
        done = subprocess.run(["sh", "-c", line["run"]], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD})
        assert done.returncode == 0, (line, done.stderr)
    assert (bak_home / "src" / "dir1" / "file1.txt").read_bytes() == (into / "dir1" / "file1.txt").read_bytes()
    assert os.readlink(bak_home / "src" / "link") == "dir1/file1.txt" and not os.listdir(bak_home / "stage")
    assert os.listdir(os.environ["TMPDIR"]) == [] or all(n.startswith("pytest-of-") for n in os.listdir(os.environ["TMPDIR"]))


# --- a database dump on S3 (moto), its keys in restic's environment only ----------------------------
S3_KEY_ID, S3_SECRET = "AKIDBAKTESTOFFSITE", "s3-Secret/Key+never-in-argv"


class CommandLines:
    """Every command line and restic environment seen on this machine while it runs (read from /proc)."""

    def __init__(self):
        self.cmdlines: list[bytes] = []
        self.restic_env: list[bytes] = []
        self._stop = False
        import threading

        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop:
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    self.cmdlines.append(cmdline)
                    if cmdline.startswith(b"restic\0"):
                        self.restic_env.append((proc / "environ").read_bytes())
                except OSError:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()


def test_a_dump_goes_to_s3_and_is_drilled_and_restored_from_there(bak_home, s3_server, pg, monkeypatch):
    from test_pg import PASSWORD, lab_config, table_digest

    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    monkeypatch.setenv("BAK_TEST_S3_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BAK_TEST_S3_SECRET", S3_SECRET)
    repository = s3_server.repository("bak-pg")
    lab_config(bak_home, pg, dests={"nfs": {"kind": "local", "path": str(bak_home / "nfs")},
                                    "offsite": offsite(bak_home, repository,
                                                       aws_access_key_id={"env": "BAK_TEST_S3_KEY_ID"},
                                                       aws_secret_access_key={"env": "BAK_TEST_S3_SECRET"})},
               globals=True)
    assert run_cli("destination", "init", "offsite").code == 0
    with CommandLines() as seen:
        created = run_cli("create")
    assert created.code == 0, created.envelope
    assert any(c.startswith(b"restic\0backup") for c in seen.cmdlines)
    assert not any(S3_SECRET.encode() in c or RESTIC_PASSWORD.encode() in c for c in seen.cmdlines)
    ours = [e for e in seen.restic_env if f"RESTIC_REPOSITORY={repository}\0".encode() in e]
    assert ours and all(f"AWS_SECRET_ACCESS_KEY={S3_SECRET}\0".encode() in e for e in ours)
    name = created.envelope["result"]["targets"][0]["name"]
    # restic's own view, with the keys given the usual way: one stream snapshot, one seal holding the sidecars.
    env = {"AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    seal = next(s for s in snapshots(repository, env) if "seal" in s["tags"])
    token = next(t.split("=")[1] for t in seal["tags"] if t.startswith("upload="))
    assert f"sidecar:{token}=.meta.json" in seal["tags"] and any(t.startswith(f"sha256:{token}=") for t in seal["tags"])
    tar = restic(repository, "dump", seal["id"], seal["paths"][0], env=env)
    assert f"{name}.meta.json" in tar.stdout

    drill = run_cli("drill", "--from", "offsite")
    assert drill.code == 0 and drill.envelope["result"]["drills"][0]["passed"], drill.envelope
    pg.psql("DROP DATABASE IF EXISTS app_offsite")
    restored = run_cli("restore", "--target", "pg-app", "--from", "offsite", "--into", "app_offsite", "--no-owner")
    assert restored.code == 0, restored.envelope
    assert table_digest(pg, "app_offsite") == table_digest(pg, "app")
    pg.psql("DROP DATABASE app_offsite")
    log = json.dumps(run_cli("log").envelope)
    assert S3_SECRET not in log and RESTIC_PASSWORD not in log

    # The runbook's by-hand lines, once the NFS copy is gone, run by a shell with restic alone: the dump
    # comes out of its snapshot and passes its sha256 check, the globals come out of the seal's tar.
    from bak.dr import manual

    monkeypatch.setattr(manual, "STAGE", str(bak_home / "stage"))
    (bak_home / "stage").mkdir()
    shutil.rmtree(bak_home / "nfs")
    [step] = run_cli("dr", "plan").envelope["result"]["steps"]
    assert step["source"]["destination"] == "offsite"
    fetching = [line["run"] for line in step["commands"]["manual"] if line["run"].startswith(("restic ", "echo "))]
    assert len(fetching) == 3  # the dump, its check, the globals
    for line in fetching:
        done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env, "RESTIC_REPOSITORY": repository, "RESTIC_PASSWORD": RESTIC_PASSWORD})
        assert done.returncode == 0, (line, done.stderr)
    staged = bak_home / "stage" / f"{name}.globals.sql"
    assert staged.read_text() == tar_member(restic(repository, "dump", seal["id"], seal["paths"][0], env=env).stdout,
                                            f"{name}.globals.sql")
    assert "CREATE ROLE" in staged.read_text()


def tar_member(tar_text: str, member: str) -> str:
    """A member of a tar given as text (restic dump's stdout), read by Python's tarfile."""
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar_text.encode("utf-8", "surrogateescape"))) as archive:
        return archive.extractfile(member).read().decode()


# --- bak sync ---------------------------------------------------------------------------------------
def pg_target(dests: list[str], **extra) -> dict:
    """A PostgreSQL target that sync only reads the files of (nothing connects to its server)."""
    return {"name": "pg-app", "method": "pg_dump", "destinations": dests, "interval": "6h", **extra,
            "pg_dump": {"database": "app", "address": "127.0.0.1", "port": 9}}


def fake_dump(home: Path, when: str, size: int = 200_000, root: str = "nfs") -> str:
    """A dump as bak writes it on a folder destination: the file and its sha256sum-format sidecar."""
    import hashlib

    name = f"pg-app-{when}.dump"
    folder = home / root / "postgresql" / "pg-app"
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    (folder / name).write_bytes(data)
    (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (folder / f"{name}.meta.json").write_text(json.dumps({"row_counts": {"public.t": 1}}))
    return name


def test_sync_copies_what_the_repository_lacks_checked_on_the_way_then_prune_forgets_by_id(bak_home, rest_server):
    repository = rest_server.repository("sync/")
    names = [fake_dump(bak_home, f"2026-11-2{day}_120000") for day in (6, 7, 8, 9)]
    dests = {"nfs": {"kind": "local", "path": str(bak_home / "nfs")}, "offsite": offsite(bak_home, repository)}
    tree_config(bak_home, dests)
    data = yaml.safe_load((bak_home / "config.yaml").read_text())
    data["targets"].append(pg_target(["nfs", "offsite"], policy="one"))
    write_config(bak_home / "config.yaml", data)
    assert run_cli("create", "--target", "files").code == 1  # offsite not created yet: the NFS copy is made anyway
    assert run_cli("destination", "init", "offsite").code == 0

    plan = run_cli("sync", "--to", "offsite", "--dry-run")
    assert plan.code == 0, plan.envelope
    planned = {t["target"]: [p["name"] for p in t["planned"]] for t in plan.envelope["result"]["targets"]}
    assert planned["pg-app"] == sorted(names, reverse=True) and len(planned["files"]) == 1
    since = run_cli("sync", "--to", "offsite", "--dry-run", "--target", "pg-app", "--since", "2026-11-28")
    assert [p["name"] for p in since.envelope["result"]["targets"][0]["planned"]] == names[:1:-1]
    assert snapshots(repository) == []  # a dry run copies nothing

    damaged = bak_home / "nfs" / "postgresql" / "pg-app" / names[0]
    good = damaged.read_bytes()
    damaged.write_bytes(good[:1000] + bytes([good[1000] ^ 1]) + good[1001:])
    synced = run_cli("sync", "--to", "offsite")
    assert synced.code == 1
    [failure] = [f for t in synced.envelope["result"]["targets"] for f in t["failed"]]
    assert failure["name"] == names[0] and synced.envelope["errors"][0]["code"] == "checksum_mismatch"
    assert synced.envelope["result"]["copied"] == 4
    assert not any(names[0] in p for s in snapshots(repository) for p in s["paths"])  # stopped before saving

    damaged.write_bytes(good)
    again = run_cli("sync", "--to", "offsite")
    assert again.code == 0 and again.envelope["result"]["copied"] == 1, again.envelope
    assert run_cli("sync", "--to", "offsite").envelope["result"]["copied"] == 0  # nothing left to copy
    listed = run_cli("list", "--destination", "offsite", "--target", "pg-app").envelope["result"]["backups"]
    assert sorted(b["name"] for b in listed) == sorted(names)
    assert {b["when"][:10] for b in listed} == {f"2026-11-2{d}" for d in (6, 7, 8, 9)}  # each keeps its own time
    assert all(".meta.json" in " ".join(b["sidecars"]) for b in listed)

    dry = run_cli("prune", "--target", "pg-app", "--dry-run", "--force")  # --force: these dumps are old
    store = next(s for s in dry.envelope["result"]["targets"][0]["stores"] if s["store"] == "offsite")
    removed = [d for d in store["decisions"] if not d["keep"]]
    # Three of the four dumps go: their own snapshots; the seals go when nothing they seal is kept.
    before = snapshots(repository)
    kept = next(d["name"] for d in store["decisions"] if d["keep"])
    kept_seals = {t.split("=")[1] for s in before if "seal" in s["tags"] for t in s["tags"]
                  if t.startswith("upload=")} & {t.split("=")[1] for s in before if s["paths"][0].endswith(kept)
                                                  for t in s["tags"] if t.startswith("upload=")}
    assert len(removed) == 3 and all(d["snapshots"] for d in removed) and kept_seals
    assert set(store["restic_forget"]) >= {i for d in removed for i in d["snapshots"]}
    before = {s["id"] for s in before}
    assert set(store["restic_forget"]) <= before
    pruned = run_cli("prune", "--target", "pg-app", "--force")
    assert pruned.code == 0, pruned.envelope
    left = snapshots(repository)
    assert {s["id"] for s in left} == before - set(store["restic_forget"])
    assert [b["name"] for b in run_cli("list", "--destination", "offsite", "--target", "pg-app").envelope["result"][
        "backups"]] == [kept]  # the kept dump is still sealed: its seal stayed
    assert restic(repository, "check").returncode == 0
    ops = run_cli("log", "--kind", "prune").envelope["result"]["operations"]
    assert sum(o["details"].get("store") == "offsite" for o in ops) == 3


def test_a_killed_sync_resumes_and_a_server_killed_mid_upload_counts_nothing(bak_home, tmp_path):
    need("rclone", "restic")
    port = free_port()
    server = ResticServer(["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}", str(tmp_path / "data")], port,
                          tmp_path, f"rest:http://127.0.0.1:{port}/")
    server.start()
    try:
        names = [fake_dump(bak_home, f"2026-11-2{day}_120000", size=3 << 20) for day in (6, 7)]
        repository = server.repository("killed/")
        write_config(bak_home / "config.yaml", {"version": 1, "destinations": {
            "nfs": {"kind": "local", "path": str(bak_home / "nfs")},
            "offsite": offsite(bak_home, repository, retry_seconds=3)}, "targets": [pg_target(["nfs", "offsite"])]})
        assert run_cli("destination", "init", "offsite").code == 0
        # The server dies while restic uploads (slowly, --limit-upload): the copy fails, nothing counts.
        proc = bak_subprocess("sync", "--to", "offsite", "--limit-upload", "300", "--json")
        deadline = time.monotonic() + 30
        while not any(b"restic\0" in p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(4)
        server.stop()
        out, err = proc.communicate(timeout=120)
        envelope = json.loads(out)
        assert proc.returncode == 1 and envelope["errors"][0]["code"] == "restic_gave_up", envelope
        assert b"Traceback" not in err
        status = run_cli("status")  # status answers, the server being down: that destination is unreachable
        row = next(d for d in status.envelope["result"]["destinations"] if d["destination"] == "offsite")
        assert row["level"] == "unreachable" and "connection refused" in row["error"], row
        server.start()
        assert not [s for s in snapshots(repository) if "seal" in s["tags"]]
        # A sync SIGKILLed mid-way leaves at most an unsealed upload, which the next run removes.
        proc = bak_subprocess("sync", "--to", "offsite", "--limit-upload", "500", "--json")
        time.sleep(3)
        kill_tree(proc.pid)
        proc.communicate()
        done = run_cli("sync", "--to", "offsite")
        assert done.code == 0 and done.envelope["result"]["copied"] == 2, done.envelope
        listed = run_cli("list", "--destination", "offsite").envelope["result"]
        assert sorted(b["name"] for b in listed["backups"]) == sorted(names) and listed["partials"] == []
        assert len(snapshots(repository)) == 3  # the two dumps, and the one seal of the batch
        # restic check needs the killed run's lock gone: bak removes it, its holder being dead.
        store = ResticStore("offsite", repository, {"file": str(bak_home / "restic.pass")})
        assert store.check((1, 1))["ok"]
    finally:
        server.stop()


# --- wrong password, locks, a full disk ------------------------------------------------------------
def local_lab(home: Path, repository: Path, **extra) -> None:
    write_config(home / "config.yaml", {"version": 1, "destinations": {
        "nfs": {"kind": "local", "path": str(home / "nfs")}, "usb": offsite(home, str(repository), **extra)},
        "policies": {"one": {"keep_last": 1}}, "targets": [pg_target(["nfs", "usb"], policy="one")]})


def test_a_wrong_password_is_said_as_such(bak_home):
    need("restic")
    fake_dump(bak_home, "2026-11-26_120000")
    local_lab(bak_home, bak_home / "repo")
    assert run_cli("sync", "--to", "usb").code == 0
    data = yaml.safe_load((bak_home / "config.yaml").read_text())
    data["destinations"]["usb"]["password"] = {"file": secret(bak_home, "other.pass", "not the password")}
    write_config(bak_home / "config.yaml", data)
    listed = run_cli("list", "--destination", "usb")
    assert listed.code == 2 and listed.envelope["errors"][0]["code"] == "restic_wrong_password"
    assert listed.envelope["errors"][0]["where"] == "destinations.usb.password"


def test_a_live_lock_is_respected_and_a_dead_holders_lock_removed(bak_home):
    need("restic")
    for day in (6, 7):
        fake_dump(bak_home, f"2026-11-2{day}_120000")
    repository = bak_home / "repo"
    local_lab(bak_home, repository)
    assert run_cli("sync", "--to", "usb").code == 0
    holder = subprocess.Popen(["restic", "backup", "--stdin", "--stdin-filename", "held"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "RESTIC_REPOSITORY": str(repository), "RESTIC_PASSWORD": RESTIC_PASSWORD})
    try:
        deadline = time.monotonic() + 20
        while not list((repository / "locks").iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        held = run_cli("prune", "--target", "pg-app", "--force")
        assert held.code == 3 and held.envelope["errors"][0]["code"] == "repository_locked", held.envelope
        assert f"PID {holder.pid}" in held.envelope["errors"][0]["message"]
        assert len(snapshots(str(repository))) == 3  # nothing forgotten: two dumps, one seal
    finally:
        holder.kill()
        holder.wait()
    assert list((repository / "locks").iterdir())  # the killed holder's lock is still there ...
    pruned = run_cli("prune", "--target", "pg-app", "--force")
    assert pruned.code == 0, pruned.envelope  # ... and removed, its holder being gone
    assert len(snapshots(str(repository))) == 2  # the newest dump, and the seal it still needs


def test_a_full_disk_under_the_repository_fails_the_copy_in_its_own_words(bak_home, tiny_disk):
    need("restic")
    fake_dump(bak_home, "2026-11-26_120000", size=3 << 20)
    local_lab(bak_home, tiny_disk / "repo", retry_seconds=2)
    synced = run_cli("sync", "--to", "usb")
    assert synced.code == 1, synced.envelope
    error = synced.envelope["errors"][0]
    assert "no space left on device" in error["message"], error
    assert not any("seal" in s["tags"] for s in snapshots(str(tiny_disk / "repo")))


# --- SFTP through bak's own ssh ----------------------------------------------------------------------
def test_sftp_goes_through_baks_key_and_known_hosts_only(bak_home, sshd):
    need("restic", "ssh")
    name = fake_dump(bak_home, "2026-11-26_120000")
    known_hosts = bak_home / "known_hosts"
    known_hosts.write_text("")
    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": {"nas": sshd.host_config(known_hosts)},
        "destinations": {"nfs": {"kind": "local", "path": str(bak_home / "nfs")},
                         "offsite": offsite(bak_home, f"sftp:{bak_home}/sftp-repo", host="nas")},
        "targets": [pg_target(["nfs", "offsite"])]})
    refused = run_cli("destination", "init", "offsite")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "host_key_unknown", refused.envelope
    assert not (bak_home / "sftp-repo").exists()
    sshd.trust(known_hosts)
    assert run_cli("destination", "init", "offsite").code == 0
    assert (bak_home / "sftp-repo" / "config").is_file()
    synced = run_cli("sync", "--to", "offsite")
    assert synced.code == 0 and synced.envelope["result"]["copied"] == 1, synced.envelope
    assert [b["name"] for b in run_cli("list", "--destination", "offsite").envelope["result"]["backups"]] == [name]


# --- the rotating check, status and 3-2-1 ------------------------------------------------------------
def test_verify_reads_the_repository_part_by_part_and_status_counts_it_off_site(bak_home, rest_server):
    repository = rest_server.repository("status/")
    tree_config(bak_home, {"nfs": {"kind": "local", "path": str(bak_home / "nfs"), "medium": "ssd"},
                           "offsite": offsite(bak_home, repository, check_subset="1/2")})
    assert run_cli("destination", "init", "offsite").code == 0
    assert run_cli("create").code == 0
    parts = []
    for _ in range(3):
        verified = run_cli("verify")
        assert verified.code == 0, verified.envelope
        parts.append(verified.envelope["result"]["repositories"][0])
    assert [p["subset"] for p in parts] == ["1/2", "2/2", "1/2"]
    assert parts[0]["fully_read_since"] is None and parts[1]["fully_read_since"] is not None
    checks = run_cli("log", "--kind", "check").envelope["result"]["operations"]
    assert [o["details"]["subset"] for o in checks] == ["1/2", "2/2", "1/2"][::-1]
    status = run_cli("status").envelope["result"]
    row = next(d for d in status["destinations"] if d["destination"] == "offsite")
    assert row["check"]["part"] == "1/2" and row["check"]["fully_read_since"] == parts[2]["fully_read_since"]
    assert row["level"] == "ok" and "127.0.0.1" in row["on"]
    copies = status["targets"][0]["copies"]
    assert copies["offsite_destinations"] == ["offsite"] and copies["media_count"] == 2 and copies["ok"]


def test_a_snapshot_held_on_an_ssh_destination_is_staged_here_for_restic(bak_home, sshd):
    need("restic", "rsync")
    known_hosts = sshd.trust(bak_home / "known_hosts")
    tree_config(bak_home, {"nfs": {"kind": "ssh", "host": "nas", "path": str(bak_home / "nfs")},
                           "usb": offsite(bak_home, str(bak_home / "repo"))},
                hosts={"nas": sshd.host_config(known_hosts)})
    created = run_cli("create")
    assert created.code == 0, created.envelope
    copy = next(c for c in created.envelope["result"]["targets"][0]["copies"] if c["store"] == "usb")
    assert copy["ok"] and copy["from"] == "nfs"
    assert [n for n in os.listdir(os.environ["TMPDIR"]) if not n.startswith("pytest-of-")] == []  # staging removed
    drill = run_cli("drill", "--from", "usb")
    assert drill.code == 0 and drill.envelope["result"]["drills"][0]["passed"], drill.envelope
