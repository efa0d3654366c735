"""bak status on a lab with one target in each state; list filters; parallel verify; one connection per host."""

import hashlib
import os
from datetime import datetime, timedelta, timezone

import pytest

from bak import naming
from bak.journal import Journal
from bak.run.ssh import SSHRunner
from conftest import run_cli, write_config

NOW = datetime.now().replace(microsecond=0)


def age_h(hours_before_now: float) -> float:
    """The age, now, of a backup made that long before NOW (taken when the module was collected, maybe
    minutes before the test runs)."""
    return hours_before_now + (datetime.now() - NOW).total_seconds() / 3600


def dump(folder, db, hours_ago, data=b"PGDMP-data"):
    folder.mkdir(parents=True, exist_ok=True)
    name = naming.pg_dump_name(db, NOW - timedelta(hours=hours_ago))
    (folder / name).write_bytes(data)
    (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    return name


def journal_row(kind, target, status, days_ago=0.0, error=None, details=None):
    journal = Journal.default()
    op = journal.start(kind, target, details)
    journal.finish(op, status, error_tail=error)
    when = (datetime.now(timezone.utc) - timedelta(days=days_ago)).isoformat(timespec="seconds")
    journal.db.execute("UPDATE operations SET started_at = ? WHERE id = ?", (when, op))
    journal.close()


def target(name, db, dests, interval="6h"):
    return {"name": name, "method": "pg_dump", "destinations": dests, "interval": interval, "pg_dump": {"database": db}}


@pytest.fixture
def lab(bak_home, tiny_disk, sshd):
    a, b, c = bak_home / "a", bak_home / "b", bak_home / "c"
    # b is on another host (an SSH host; loopback stands in for it), the one off-site copy 3-2-1 asks for.
    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": {"store": sshd.host_config(sshd.trust(bak_home / "known_hosts"))},
        "destinations": {"a": {"kind": "local", "path": str(a), "medium": "ssd"},
                         "b": {"kind": "ssh", "host": "store", "path": str(b), "medium": "nfs", "offsite": True},
                         "c": {"kind": "local", "path": str(c), "medium": "hdd"},
                         "tiny": {"kind": "local", "path": str(tiny_disk), "medium": "usb", "offsite": True}},
        "targets": [target("fresh", "fresh", ["a", "b"]), target("late", "late", ["a", "b"]),
                    target("stale", "stale", ["a", "b"]), target("missing", "missing", ["a", "b"]),
                    target("failing", "failing", ["a", "b"]), target("leftover", "leftover", ["a", "b"]),
                    target("nodrill", "nodrill", ["a", "b"]), target("onecopy", "onecopy", ["c"]),
                    target("full", "full", ["a", "tiny"])]})
    made = {}
    for name, hours in (("fresh", 1), ("late", 8), ("stale", 20), ("failing", 3), ("leftover", 1), ("nodrill", 1),
                        ("full", 1)):
        for dest in ("a", "b") if name != "full" else ("a",):
            made[name] = dump(bak_home / dest / "postgresql", name, hours)
    made["onecopy"] = dump(bak_home / "c" / "postgresql", "onecopy", 1)
    dump(tiny_disk / "postgresql", "full", 1, data=os.urandom(950 * 1024))
    (bak_home / "a" / "postgresql" / (naming.pg_dump_name("leftover", NOW) + ".partial")).write_bytes(b"half")
    for name in ("fresh", "late", "stale", "failing", "leftover", "onecopy", "full"):
        journal_row("drill", name, "ok", days_ago=2, details={"store": "a", "name": made[name]})
        journal_row("verify", name, "ok", days_ago=1, details={"store": "a", "name": made[name]})
    # nodrill's one drill, 40 days ago, restored a backup pruned since: nothing on its destinations is proven.
    journal_row("drill", "nodrill", "ok", days_ago=40,
                details={"store": "a", "name": naming.pg_dump_name("nodrill", NOW - timedelta(days=40))})
    journal_row("create", "failing", "failed", days_ago=0, error="pg_not_ready: PostgreSQL at 127.0.0.1:5432 is not ready")
    return bak_home


def test_status_reports_each_state(lab):
    result = run_cli("status")
    assert result.code == 1
    targets = {t["target"]: t for t in result.envelope["result"]["targets"]}
    assert {name: t["state"] for name, t in targets.items()} == {
        "fresh": "OK", "late": "LATE", "stale": "STALE", "missing": "MISSING", "failing": "FAILING",
        "leftover": "OK", "nodrill": "OK", "onecopy": "OK", "full": "OK"}
    assert targets["fresh"]["problems"] == []
    fresh = targets["fresh"]["copies"]
    assert {k: fresh[k] for k in ("destinations", "copies", "media_count", "offsite", "offsite_destinations", "ok")} == \
        {"destinations": ["a", "b"], "copies": 3, "media_count": 2, "offsite": 1, "offsite_destinations": ["b"], "ok": True}
    assert any(m.endswith("on this machine") for m in fresh["media"]) and any(m.endswith("on 127.0.0.1") for m in fresh["media"])
    assert "pg_not_ready" in targets["failing"]["problems"][0]
    assert targets["leftover"]["partials"] == [{"store": "a", "name": naming.pg_dump_name("leftover", NOW) + ".partial"}]
    assert targets["nodrill"]["drill_overdue"] and targets["nodrill"]["proven_rpo"] is None
    assert "never test-restored: no backup on its destinations passed a restore drill" in targets["nodrill"]["problems"]
    assert targets["fresh"]["proven_rpo"]["backup"] == naming.pg_dump_name("fresh", NOW - timedelta(hours=1))
    assert abs(targets["fresh"]["proven_rpo"]["age_h"] - age_h(1)) < 0.1 and targets["fresh"]["proven_rpo"]["ok"]
    assert targets["onecopy"]["copies"]["copies"] == 2 and not targets["onecopy"]["copies"]["ok"]
    assert "3-2-1 not met: missing 3 copies, 2 media, 1 offsite" in targets["onecopy"]["problems"]
    assert targets["missing"]["problems"] == ["no backup on any destination"]
    tiny = next(d for d in result.envelope["result"]["destinations"] if d["destination"] == "tiny")
    assert tiny["level"] == "critical" and tiny["used_percent"] >= 90
    # full's second copy is a USB disk marked offsite, but plugged into this machine: not off-site.
    assert "3-2-1: tiny is marked offsite but is on this machine, where bak runs" in targets["full"]["problems"]
    assert targets["full"]["copies"]["media_count"] == 2  # a and the tmpfs: two filesystems, two media
    assert result.envelope["result"]["summary"].startswith("ATTENTION: 8 of 9 target(s)")


def test_healthy_lab_exits_0(lab):
    cfg = (lab / "config.yaml").read_text().split("  targets:")[0]
    import yaml

    data = yaml.safe_load((lab / "config.yaml").read_text())
    data["targets"] = [t for t in data["targets"] if t["name"] == "fresh"]
    data["destinations"] = {k: v for k, v in data["destinations"].items() if k in ("a", "b")}
    write_config(lab / "config.yaml", data)
    result = run_cli("status")
    assert result.code == 0, result.envelope
    assert result.envelope["result"]["summary"].startswith("HEALTHY")
    assert cfg


def test_a_proven_rpo_past_the_configured_bound_is_flagged(lab):
    import yaml

    data = yaml.safe_load((lab / "config.yaml").read_text())
    data["dr"] = {"proven_rpo_max": "6h"}
    write_config(lab / "config.yaml", data)
    targets = {t["target"]: t for t in run_cli("status").envelope["result"]["targets"]}
    late, fresh = targets["late"]["proven_rpo"], targets["fresh"]["proven_rpo"]
    assert late["bound_h"] == 6 and abs(late["age_h"] - age_h(8)) < 0.1 and not late["ok"]
    assert f"proven RPO {late['age_h']:.1f}h exceeds 6.0h: the newest backup that passed a restore drill is " \
        f"{late['backup']}" in targets["late"]["problems"]
    assert fresh["ok"] and not any("proven RPO" in p for p in targets["fresh"]["problems"])


def test_list_filters(lab):
    everything = run_cli("list").envelope["result"]["backups"]
    assert {b["target"] for b in everything} == {"fresh", "late", "stale", "failing", "leftover", "nodrill", "onecopy", "full"}
    only_b = run_cli("list", "--destination", "b").envelope["result"]["backups"]
    assert {b["store"] for b in only_b} == {"b"}
    recent = run_cli("list", "--since", (NOW - timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S")).envelope["result"]["backups"]
    assert {b["target"] for b in recent} == {"fresh", "failing", "leftover", "nodrill", "onecopy", "full"}
    older = run_cli("list", "--until", (NOW - timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S")).envelope["result"]["backups"]
    assert {b["target"] for b in older} == {"late", "stale"}
    assert run_cli("list", "--type", "vzdump").envelope["result"]["backups"] == []
    partial = run_cli("list", "--target", "leftover").envelope["result"]["partials"]
    assert len(partial) == 1


def test_verify_names_the_bad_file_and_checks_every_copy(lab, postgres):
    import subprocess

    real = subprocess.run([str(postgres.bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres",
                           "-d", "postgres", "-Fc"], env={**os.environ, "PGPASSWORD": postgres.password},
                          capture_output=True, check=True).stdout
    for name, hours in (("fresh", 1), ("late", 8)):
        for dest in ("a", "b"):
            folder = lab / dest / "postgresql"
            for old in folder.glob(f"pg-{name}-*"):
                old.unlink()
            dump(folder, name, hours, data=real)
    bad = lab / "b" / "postgresql" / naming.pg_dump_name("fresh", NOW - timedelta(hours=1))
    flipped = bytearray(real)
    flipped[len(real) // 2] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    result = run_cli("verify", "--target", "fresh", "--target", "late")
    assert result.code == 1
    rows = {(r["target"], r["store"]): r for r in result.envelope["result"]["checked"]}
    assert len(rows) == 4
    assert rows[("fresh", "b")]["checksum"] == "mismatch" and not rows[("fresh", "b")]["ok"]
    assert all(r["ok"] and r["checksum"] == r["format"] == "ok" for key, r in rows.items() if key != ("fresh", "b"))
    assert len(result.envelope["errors"]) == 1
    assert bad.name in result.envelope["errors"][0]["message"]
    assert result.envelope["errors"][0]["where"] == f"b:{bad.name}"


def test_status_opens_exactly_one_connection_per_host(sshd, bak_home):
    known = sshd.trust(bak_home / "known_hosts")
    hosts = {name: sshd.host_config(known) for name in ("h1", "h2", "h3")}
    dests = {f"d{i}": {"kind": "ssh", "host": f"h{i}", "path": str(bak_home / f"remote{i}")} for i in (1, 2, 3)}
    for i in (1, 2, 3):
        dump(bak_home / f"remote{i}" / "postgresql", "app", 1)
    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": hosts, "destinations": dests,
        "targets": [target("app", "app", ["d1", "d2", "d3"]), target("other", "other", ["d1", "d2"]),
                    {"name": "vm", "method": "vzdump", "host": "h1", "destinations": ["d1", "d2", "d3"],
                     "vzdump": {"vmid": 100, "storage": "local"}}]})
    before = SSHRunner.connections_opened
    result = run_cli("status")
    assert SSHRunner.connections_opened - before == 3
    app = next(t for t in result.envelope["result"]["targets"] if t["target"] == "app")
    assert app["state"] == "OK" and app["copies"]["destinations"] == ["d1", "d2", "d3"]
    assert {d["level"] for d in result.envelope["result"]["destinations"]} <= {"ok", "warn", "critical"}
