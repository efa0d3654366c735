"""Disaster recovery of a whole lab (issue 19): the stand-in PVE host with two VMs, PostgreSQL reached over
SSH on the storage VM, a file tree and the git vault, copies on an SSH share and a local disk.

`dr plan` (order from the config's dependencies, content, runbooks), `dr drill` end to end with real
restores, proven RPO moving as drills pass and fail, `discover` flagging an unconfigured database and
VM, and `bootstrap` into an empty HOME giving back the same `bak status`.
"""

import json
import os
import sqlite3
import subprocess
import time

import pytest

from conftest import REPO, _make_sshd, need, run_cli, write_config

PASSWORD = "dr-Backup-s3cret"
STANDINS = REPO / "tests" / "standins" / "pve"


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def lab(bak_home, postgres, monkeypatch):
    need("zstd", "tar", "dd", "rsync", "git")
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    for db in ("drapp", "drforgotten"):
        postgres.psql(f"DROP DATABASE IF EXISTS {db}")
        postgres.psql(f"CREATE DATABASE {db}")
    postgres.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='drbackup') THEN "
                  f"CREATE ROLE drbackup LOGIN PASSWORD '{PASSWORD}' CREATEDB; END IF; END$$")
    postgres.psql("CREATE TABLE items (id int PRIMARY KEY, note text); "
                  "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 2000) g; "
                  "GRANT SELECT ON items TO drbackup;", db="drapp")
    pve_root = bak_home / "pve"
    (pve_root / "storage-local").mkdir(parents=True)
    (pve_root / "state.json").write_text(json.dumps({
        "node": "pve", "header_style": "new",
        "storages": {"local": {"type": "dir", "path": str(pve_root / "storage-local"), "total_kib": 400000}},
        "vms": {"103": {"name": "main", "status": "running", "lock": None, "disk_kib": 768},
                "104": {"name": "store", "status": "running", "lock": None, "disk_kib": 512},
                "105": {"name": "lab", "status": "stopped", "lock": None, "disk_kib": 256}}}))
    pve = _make_sshd(bak_home / "sshd-pve", path_dirs=[str(STANDINS)], env={"BAK_PVE_ROOT": str(pve_root)})
    store = _make_sshd(bak_home / "sshd-store")  # VM 104: PostgreSQL and the NFS share
    known = bak_home / "state" / "known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    # The store is reached as "localhost": another address than the PVE host's, so 3-2-1 sees two hosts.
    known.write_text(pve.known_hosts_line() + f"[localhost]:{store.port} " + " ".join(store.host_pub.read_text().split()[:2])
                     + "\n")
    files, vault, remote = bak_home / "files", bak_home / "vault", bak_home / "vault-remote.git"
    (files / "docs").mkdir(parents=True)
    (files / "docs" / "plan.md").write_text("# the plan\n")
    (files / "empty").mkdir()
    git("init", "-q", "--bare", "-b", "main", str(remote))
    git("init", "-q", "-b", "main", str(vault))
    git("-C", str(vault), "remote", "add", "origin", str(remote))
    (vault / "note.md").write_text("# note\n")
    pg = {"database": "drapp", "address": "127.0.0.1", "port": postgres.port, "user": "drbackup",
          "password": {"env": "BAK_TEST_PG_PASSWORD"}, "bin_dir": str(postgres.bindir)}
    vzdump = {"storage": "local", "restore_vmid_range": [9000, 9010]}
    config = {
        "version": 1,
        "hosts": {"pve": {**pve.host_config(), "description": "Proxmox host"},
                  "store": {**store.host_config(), "address": "localhost", "vmid": 104}},
        "destinations": {"pve-local": {"kind": "proxmox", "host": "pve", "storage": "local", "node": "pve"},
                         "nfs": {"kind": "ssh", "host": "store", "path": str(bak_home / "nfs"), "offsite": True},
                         "disk": {"kind": "local", "path": str(bak_home / "disk")}},
        "targets": [
            {"name": "files", "method": "rsync", "destinations": ["disk", "nfs"], "after": ["pg-app"],
             "rsync": {"source": str(files)}},
            {"name": "vault", "method": "vault", "destinations": ["disk", "nfs"],
             "vault": {"path": str(vault), "remotes": ["origin"], "branch": "main"}},
            {"name": "pg-app", "method": "pg_dump", "host": "store", "destinations": ["disk", "nfs"], "pg_dump": pg},
            {"name": "vm-103", "method": "vzdump", "host": "pve", "destinations": ["pve-local", "nfs"],
             "vzdump": {"vmid": 103, **vzdump}},
            {"name": "vm-104", "method": "vzdump", "host": "pve", "destinations": ["pve-local", "nfs"],
             "vzdump": {"vmid": 104, **vzdump}}]}
    write_config(bak_home / "config.yaml", config)
    yield {"home": bak_home, "pve": pve, "store": store, "pve_root": pve_root, "postgres": postgres, "config": config}
    pve.stop()
    store.stop()
    for db in ("drapp", "drforgotten"):
        postgres.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


ORDER = ["vm-104", "vm-103", "pg-app", "files", "vault"]


def pve_state(lab):
    return json.loads((lab["pve_root"] / "state.json").read_text())


def test_whole_lab_plan_drill_proven_rpo_discover(lab):
    home = lab["home"]
    created = run_cli("create")
    assert created.code == 0, created.envelope
    made = {t["target"]: t["name"] for t in created.envelope["result"]["targets"]}

    # The recovery kit sits beside the backups on every destination that run wrote files to, never on the
    # Proxmox storage, and the catalogue takes none of it for a backup or a foreign file.
    for root in (home / "disk", home / "nfs"):
        kit = json.loads((root / "bak" / "kit.json").read_text())
        assert set(kit["files"]) == {"config.yaml", "journal.sqlite", "known_hosts", "runbook.md", "runbook.html"}
        assert (root / "bak" / "config.yaml").read_bytes() == (home / "config.yaml").read_bytes()
    assert not list((lab["pve_root"] / "storage-local").rglob("kit.json"))
    listed = run_cli("list").envelope["result"]
    assert listed["foreign"] == [] and listed["partials"] == []
    assert all("/bak/" not in b["name"] for b in listed["backups"])

    # Before any check: the order, but nothing vouches for the backups and nothing times them.
    first = run_cli("dr", "plan")
    assert first.code == 1
    plan = first.envelope["result"]
    assert [s["target"] for s in plan["steps"]] == ORDER
    assert plan["unestimated"] == ORDER and plan["rto_s"] == 0
    assert all("never verified nor drilled" in " ".join(s["problems"]) for s in plan["steps"])

    assert run_cli("verify").code == 0
    drilled = run_cli("dr", "drill")
    assert drilled.code == 0, drilled.envelope
    report = drilled.envelope["result"]
    assert [s["target"] for s in report["steps"]] == ORDER and report["passed"] == 5 and report["failed"] == 0
    assert all(s["restore_s"] > 0 and s["measured_s"] >= s["restore_s"] and s["estimate_s"] is None
               for s in report["steps"])
    assert report["restore_s"] == pytest.approx(sum(s["restore_s"] for s in report["steps"]), abs=0.01)
    # Real restores in scratch places, all torn down: scratch VMIDs destroyed, scratch databases dropped.
    assert set(pve_state(lab)["vms"]) == {"103", "104", "105"}
    calls = (lab["pve_root"] / "calls.log").read_text()
    assert "qmrestore local:backup/" in calls and "qm destroy 9000" in calls
    assert "bak_drill_" not in lab["postgres"].psql("SELECT string_agg(datname, ' ') FROM pg_database")

    timed = run_cli("dr", "plan")
    plan = timed.envelope["result"]
    assert [s["target"] for s in plan["steps"]] == ORDER and plan["unestimated"] == []
    steps = {s["target"]: s for s in plan["steps"]}
    for step in plan["steps"]:  # every dependency comes first, and says why
        assert all(ORDER.index(a["target"]) < ORDER.index(step["target"]) for a in step["after"])
        assert step["backup"]["name"] == made[step["target"]] and step["backup"]["drilled"]
        assert step["estimate"]["seconds"] > 0 and "drill of " + made[step["target"]] in step["estimate"]["basis"]
    assert {a["target"]: a["reason"] for a in steps["files"]["after"]} == {
        "pg-app": "after: in the config", "vm-104": "host store is VM 104: its copies on nfs are there"}
    assert steps["pg-app"]["after"][0]["reason"] == "host store is VM 104: it runs there"
    assert plan["rto_s"] == pytest.approx(sum(s["estimate"]["seconds"] for s in plan["steps"]), abs=0.01)
    assert timed.code == 0, timed.envelope["errors"]
    # A second drill of the whole lab, now against the plan's estimates.
    again = run_cli("dr", "drill")
    assert again.code == 0, again.envelope
    rerun = again.envelope["result"]
    assert rerun["planned_rto_s"] == plan["rto_s"]
    for measured, planned in zip(rerun["steps"], plan["steps"]):
        assert measured["estimate_s"] == planned["estimate"]["seconds"]
        assert measured["difference_s"] == pytest.approx(measured["restore_s"] - measured["estimate_s"], abs=0.002)
    # Where the copies are: the NFS share is off-site for the VMs (another host), not for the database it shares a VM with.
    vm = steps["vm-103"]
    assert vm["source"]["destination"] == "pve-local" and [c["offsite"] for c in vm["copies"]] == [False, True]
    assert [c["offsite"] for c in steps["pg-app"]["copies"]] == [False, False]
    assert vm["commands"]["bak"] == [f"bak restore --target vm-103 --backup {made['vm-103']} --from pve-local --into 103"]
    assert vm["commands"]["manual"] == [{"on": "pve (127.0.0.1)",
                                        "run": f"qmrestore local:backup/{made['vm-103']} 103 --unique 1"}]
    # pg-app's copy on this machine's disk goes to the storage VM, is checked there, loaded, then removed.
    dump, bindir, port = made["pg-app"], lab["postgres"].bindir, lab["postgres"].port
    sha256 = (home / "disk" / "postgresql" / "pg-app" / f"{dump}.sha256").read_text().split()[0]
    on_store = "store (localhost)"
    assert steps["pg-app"]["commands"]["manual"] == [
        {"on": "this machine (the one that ran bak)",
         "run": f"scp -P {lab['store'].port} {home}/disk/postgresql/pg-app/{dump} {lab['store'].user}@localhost:/var/tmp/"},
        {"on": on_store, "run": f"echo '{sha256}  /var/tmp/{dump}' | sha256sum -c -"},
        {"on": on_store, "run": f"{bindir}/createdb -h 127.0.0.1 -p {port} -U drbackup drapp"},
        {"on": on_store, "run": f"{bindir}/pg_restore -h 127.0.0.1 -p {port} -U drbackup -d drapp --exit-on-error "
                                f"/var/tmp/{dump}"},
        {"on": on_store, "run": f"rm -- /var/tmp/{dump}"}]
    # The site lost, VM 103 comes back from the off-site NFS copy, by hand.
    away = vm["offsite_commands"]
    sha256 = next((home / "nfs").rglob(made["vm-103"] + ".sha256")).read_text().split()[0]
    staged = f"/var/tmp/{made['vm-103']}"
    assert away["destination"] == "nfs" and away["manual"] == [
        {"on": "pve (127.0.0.1)", "run": f"scp -P {lab['store'].port} {lab['store'].user}@localhost:{home}/nfs/proxmox/"
                                         f"vm-103/{made['vm-103']} /var/tmp/"},
        {"on": "pve (127.0.0.1)", "run": f"echo '{sha256}  {staged}' | sha256sum -c -"},
        {"on": "pve (127.0.0.1)", "run": f"qmrestore {staged} 103 --unique 1"},
        {"on": "pve (127.0.0.1)", "run": f"rm -- {staged}"}]

    # The bad day, by hand: VM 103 and the file tree are gone; the plan's own lines bring them back.
    state = pve_state(lab)
    state["vms"]["103"]["status"] = "stopped"
    (lab["pve_root"] / "state.json").write_text(json.dumps(state))
    pve_tools = {**os.environ, "PATH": f"{STANDINS}:{os.environ['PATH']}", "BAK_PVE_ROOT": str(lab["pve_root"])}
    subprocess.run(["qm", "destroy", "103"], env=pve_tools, check=True)
    for line in vm["commands"]["manual"]:
        subprocess.run(["sh", "-c", line["run"]], env=pve_tools, check=True, capture_output=True)
    assert pve_state(lab)["vms"]["103"]["name"] == "main"
    before = sorted((p.relative_to(home / "files"), p.is_dir() or p.read_bytes()) for p in (home / "files").rglob("*"))
    (home / "files").rename(home / "files-lost")
    for line in steps["files"]["commands"]["manual"]:
        assert line["on"] == "this machine (the one that ran bak)"
        subprocess.run(["sh", "-c", line["run"]], check=True, capture_output=True)
    assert sorted((p.relative_to(home / "files"), p.is_dir() or p.read_bytes()) for p in (home / "files").rglob("*")) == before
    print(f"\ndr plan: {timed.envelope['duration_s']}s for {len(plan['steps'])} steps; expected RTO {plan['rto_s']}s "
          f"(from the first dr drill: {report['restore_s']}s of restores, {report['measured_s']}s in all); second dr drill: "
          f"{rerun['restore_s']}s of restores ({rerun['measured_s']}s in all); per step (expected, measured): "
          + ", ".join(f"{s['target']} {s['estimate_s']}/{s['restore_s']}" for s in rerun["steps"]))

    # Proven RPO: the newest backup whose last drill passed, not merely the newest backup.
    status = {t["target"]: t for t in run_cli("status").envelope["result"]["targets"]}
    assert status["files"]["proven_rpo"]["backup"] == made["files"] and status["files"]["proven_rpo"]["ok"]
    time.sleep(1.1)
    (home / "files" / "docs" / "plan.md").write_text("# the plan, second draft\n")
    newer = run_cli("create", "--target", "files").envelope["result"]["targets"][0]["name"]
    status = {t["target"]: t for t in run_cli("status").envelope["result"]["targets"]}
    assert status["files"]["newest"]["name"] == newer and status["files"]["proven_rpo"]["backup"] == made["files"]
    damaged = home / "disk" / "rsync" / "files" / newer / "docs" / "plan.md"
    good, mtime = damaged.read_bytes(), damaged.stat().st_mtime_ns
    damaged.write_text("# not what was backed up\n")
    assert run_cli("drill", "--target", "files").code == 1  # its drill fails: the proof stays with the older one
    status = {t["target"]: t for t in run_cli("status").envelope["result"]["targets"]}
    assert status["files"]["proven_rpo"]["backup"] == made["files"]
    assert run_cli("dr", "plan").envelope["result"]["steps"][3]["backup"]["name"] == made["files"]  # never the failed one
    damaged.write_bytes(good)
    os.utime(damaged, ns=(mtime, mtime))
    assert run_cli("drill", "--target", "files").code == 0
    status = {t["target"]: t for t in run_cli("status").envelope["result"]["targets"]}
    assert status["files"]["proven_rpo"]["backup"] == newer

    # Discover: the database and the VM no target backs up.
    found = run_cli("discover")
    assert found.code == 1
    items = {(i["kind"], i["name"]): i for i in found.envelope["result"]["items"]}
    assert items[("guest", "main")]["covered_by"] == ["vm-103"] and items[("guest", "store")]["covered_by"] == ["vm-104"]
    assert items[("guest", "lab")]["covered_by"] == [] and items[("guest", "lab")]["vmid"] == 105
    assert items[("database", "drapp")]["covered_by"] == ["pg-app"]
    assert items[("database", "drforgotten")]["covered_by"] == []
    assert ("database", "postgres") not in items
    flagged = {e["message"] for e in found.envelope["errors"] if e["code"] == "unprotected"}
    assert "guest 105 (lab) on pve: no target backs it up" in flagged
    assert f"database drforgotten on store (127.0.0.1:{lab['postgres'].port}): no target backs it up" in flagged
    coverage = run_cli("status").envelope["result"]["coverage"]
    assert coverage["unprotected"] == found.envelope["result"]["unprotected"] >= 2
    assert "guest 105 (lab) on pve" in coverage["unprotected_items"]


def test_runbooks_and_the_kit_survive_the_machine(lab, tmp_path, monkeypatch):
    home = lab["home"]
    assert run_cli("create").code == 0
    assert run_cli("dr", "drill", "--from", "nowhere").code == 2
    # The site is gone: every step drilled from the off-site share (the VMs staged on the PVE host from there).
    away = run_cli("dr", "drill", "--from", "nfs")
    assert away.code == 0, away.envelope
    assert {(s["store"], s["passed"]) for s in away.envelope["result"]["steps"]} == {("nfs", True)}
    assert run_cli("verify").code == 0
    written = run_cli("dr", "plan", "--runbook", str(tmp_path / "runbook.html"))
    assert written.envelope["result"]["runbook"] == str(tmp_path / "runbook.html")
    page = (tmp_path / "runbook.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page and "<link" not in page
    assert run_cli("dr", "plan", "--runbook", str(tmp_path / "runbook.md")).code == 0
    text = (tmp_path / "runbook.md").read_text()
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[:2] == ["## 0. Bring bak back", "## Order"]
    assert [s.split()[2] for s in sections[2:]] == ORDER
    fingerprint = lab["store"].fingerprint()
    assert (f"bak bootstrap --from {lab['store'].user}@localhost:{home}/nfs --port {lab['store'].port} "
            f"--key {lab['store'].client_key} --fingerprint {fingerprint}") in text
    assert "`targets[2].pg_dump.password`: env BAK_TEST_PG_PASSWORD" in text
    assert run_cli("dr", "plan", "--runbook", str(tmp_path / "runbook.txt")).code == 2
    # The copy on the destinations is the same runbook, refreshed by the last create.
    assert run_cli("create", "--target", "files").code == 0
    kit = home / "nfs" / "bak"
    assert "passed a restore drill" in (kit / "runbook.md").read_text()
    journal = (kit / "journal.sqlite").read_bytes()
    assert PASSWORD.encode() not in journal and PASSWORD.encode() not in (kit / "config.yaml").read_bytes()

    before = run_cli("status").envelope["result"]
    # A fresh machine: an empty HOME, no config, no state, an empty known_hosts.
    fresh = tmp_path / "fresh-home"
    fresh.mkdir()
    for var in ("BAK_CONFIG", "BAK_STATE_DIR"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(fresh))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(fresh / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(fresh / ".local" / "state"))
    spec = f"{lab['store'].user}@localhost:{home}/nfs"
    key = ["--port", str(lab["store"].port), "--key", str(lab["store"].client_key)]
    unknown = run_cli("bootstrap", "--from", spec, *key)
    assert unknown.code == 3 and unknown.envelope["errors"][0]["code"] == "host_key_unknown"
    assert f"--fingerprint {fingerprint}" in unknown.envelope["errors"][0]["hint"]
    assert not (fresh / ".config" / "bak" / "config.yaml").exists()
    restored = run_cli("bootstrap", "--from", spec, *key, "--fingerprint", fingerprint)
    assert restored.code == 0, restored.envelope
    result = restored.envelope["result"]
    assert result["config"] == str(fresh / ".config" / "bak" / "config.yaml")
    assert result["journal"] == str(fresh / ".local" / "state" / "bak" / "journal.sqlite")
    assert result["operations"] > 10 and result["known_hosts_added"] == 1  # the PVE host's; the store's was just trusted
    assert {s["where"] for s in result["secrets"]} >= {"hosts.pve.key_file", "targets[2].pg_dump.password"}
    after = run_cli("status").envelope["result"]

    def lasting(status):  # what must be the same on the new machine (ages move with the clock)
        return [{k: t[k] for k in ("target", "state", "copies", "partials", "problems")} | {
            "newest": t["newest"]["name"], "verify": t["last_verify"], "drill": t["last_drill"],
            "proven": t["proven_rpo"]["backup"]} for t in status["targets"]]

    assert lasting(after) == lasting(before)
    again = run_cli("bootstrap", "--from", spec, *key)
    assert again.code == 3 and again.envelope["errors"][0]["code"] == "would_overwrite"
    with sqlite3.connect(fresh / ".local" / "state" / "bak" / "journal.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.fixture
def small_lab(bak_home):
    """A file tree backed up to a folder; a restic repository beside: no servers."""
    need("rsync", "restic")
    (bak_home / "tree" / "sub").mkdir(parents=True)
    (bak_home / "tree" / "sub" / "a.txt").write_text("a\n")
    secret = bak_home / "restic.pass"
    secret.write_text("correct horse battery staple\n")
    secret.chmod(0o600)
    write_config(bak_home / "config.yaml", {
        "version": 1,
        "destinations": {"disk": {"kind": "local", "path": str(bak_home / "disk")},
                         "usb": {"kind": "restic", "repository": str(bak_home / "restic"), "password": {"file": str(secret)}}},
        "targets": [{"name": "tree", "method": "rsync", "destinations": ["disk"], "rsync": {"source": str(bak_home / "tree")}}]})
    return bak_home


def test_the_kit_in_a_restic_repository_replaces_itself_and_bootstraps_by_its_runbook_lines(small_lab, tmp_path,
                                                                                               monkeypatch):
    from bak import config as bak_config
    from bak.actions import Session
    from bak.dr import kit, manual
    from bak.dr.plan import build
    from bak.stores import open_store

    assert run_cli("create").code == 0
    loaded = bak_config.load(small_lab / "config.yaml")
    with Session(loaded) as session:
        plan, _ = build(session)
        repo = open_store(loaded.destinations["usb"], session.hosts)
        for _ in range(2):  # what a create does on each destination it wrote to
            kit.write(repo, kit.kit_files(loaded, plan))
    # One backup for the whole kit (each restic call pays the key derivation); the second replaced the first.
    repo.forget_cached()
    assert [a.name for a in repo.artifacts("bak")] == ["kit.tar"] and not repo.leftovers("bak")

    work = tmp_path / "work"
    work.mkdir()
    lines = manual.bootstrap_lines(loaded, loaded.destinations["usb"], None)
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(small_lab / "restic.pass")}
    for line in lines[:-1]:
        subprocess.run(["sh", "-c", line["run"]], cwd=work, env=env, check=True, capture_output=True)
    assert lines[-1]["run"] == "bak bootstrap --from bak-kit"
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("BAK_CONFIG", str(fresh / "config.yaml"))
    monkeypatch.setenv("BAK_STATE_DIR", str(fresh / "state"))
    restored = run_cli("bootstrap", "--from", str(work / "bak-kit"))
    assert restored.code == 0, restored.envelope
    assert (fresh / "config.yaml").read_bytes() == (small_lab / "config.yaml").read_bytes()
    assert restored.envelope["result"]["operations"] >= 1  # the journal came back too


def test_bootstrap_refuses_to_overwrite_keeps_what_force_replaces_and_takes_no_damaged_kit(small_lab, tmp_path,
                                                                                            monkeypatch):
    assert run_cli("create").code == 0
    kit = small_lab / "disk" / "bak"
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("BAK_CONFIG", str(fresh / "config.yaml"))
    monkeypatch.setenv("BAK_STATE_DIR", str(fresh / "state"))
    assert run_cli("bootstrap", "--from", str(small_lab / "disk"), "--key", "/k").code == 2  # SSH options on a folder
    assert run_cli("bootstrap", "--from", str(small_lab / "tree")).code == 2  # no kit there
    assert run_cli("bootstrap", "--from", str(small_lab / "disk")).code == 0
    assert (fresh / "config.yaml").stat().st_mode & 0o777 == 0o600
    mine = b"version: 1\n# edited on the new machine\n"
    (fresh / "config.yaml").write_bytes(mine)
    refused = run_cli("bootstrap", "--from", str(small_lab / "disk"))
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "would_overwrite"
    assert (fresh / "config.yaml").read_bytes() == mine
    forced = run_cli("bootstrap", "--from", str(small_lab / "disk"), "--force")
    assert forced.code == 0
    kept = forced.envelope["result"]["kept"]
    assert len(kept) == 2 and any(open(k, "rb").read() == mine for k in kept if k.endswith(tuple("0123456789")))
    (kit / "config.yaml").write_text((kit / "config.yaml").read_text() + "# tampered\n")
    damaged = run_cli("bootstrap", "--from", str(small_lab / "disk"), "--force")
    assert damaged.code == 1 and damaged.envelope["errors"][0]["code"] == "kit_damaged"
    assert "config.yaml" in damaged.envelope["errors"][0]["message"]
    assert (fresh / "config.yaml").read_bytes() == (small_lab / "config.yaml").read_bytes()  # nothing was changed


def test_discover_reports_a_host_it_cannot_reach_and_still_answers_for_the_others(bak_home, sshd):
    from bak.demo import free_port

    known = sshd.trust(bak_home / "known_hosts")
    write_config(bak_home / "config.yaml", {
        "version": 1,
        "hosts": {"up": sshd.host_config(known), "down": {**sshd.host_config(known), "port": free_port()},
                  "stranger": sshd.host_config(bak_home / "empty_known_hosts")},
        "destinations": {"disk": {"kind": "local", "path": str(bak_home / "disk")}},
        "targets": []})
    found = run_cli("discover")
    assert found.code == 1
    problems = {p["host"]: p for p in found.envelope["result"]["problems"]}
    assert set(problems) == {"down", "stranger"}  # "up" answered: it is no Proxmox host and runs no target
    assert "connection refused" in problems["down"]["error"] and "not in" in problems["stranger"]["error"]
    assert found.envelope["result"]["items"] == []
    logged = run_cli("log", "--kind", "discover").envelope["result"]["operations"]
    assert [(o["kind"], o["status"]) for o in logged] == [("discover", "partial")]
