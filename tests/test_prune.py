"""bak prune on real local and SSH destinations: plan == apply, safety rules, journal."""

import hashlib
import os
import time
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bak import naming
from conftest import run_cli, write_config

NOW = datetime.now().replace(microsecond=0)


def make_backup(folder, when, db="app", sidecar=True, protected=False, data=b"dump"):
    folder.mkdir(parents=True, exist_ok=True)
    name = naming.pg_dump_name(db, when)
    (folder / name).write_bytes(data)
    if sidecar:
        (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    if protected:
        (folder / f"{name}.protected").write_text("")
    return name


def config_for(bak_home, destinations, policy=None, interval="6h", hosts=None):
    data = {"version": 1, "destinations": destinations,
            "policies": {"p": policy or {"keep_last": 2}},
            "targets": [{"name": "db", "method": "pg_dump", "destinations": list(destinations), "policy": "p",
                         "interval": interval, "pg_dump": {"database": "app"}}]}
    if hosts:
        data["hosts"] = hosts
    return write_config(bak_home / "config.yaml", data)


@pytest.fixture
def local_lab(bak_home):
    folder = bak_home / "dest" / "postgresql"
    config_for(bak_home, {"here": {"kind": "local", "path": str(bak_home / "dest")}})
    return folder


def test_dry_run_plans_and_apply_executes_exactly_that_plan(local_lab):
    names = [make_backup(local_lab, NOW - timedelta(hours=6 * i)) for i in range(5)]
    (local_lab / "notes.txt").write_text("mine")
    make_backup(local_lab, NOW - timedelta(hours=40), db="other")
    before = sorted(p.name for p in local_lab.iterdir())

    planned = run_cli("prune", "--dry-run")
    assert planned.code == 0, planned.envelope
    assert sorted(p.name for p in local_lab.iterdir()) == before
    decisions = planned.envelope["result"]["targets"][0]["stores"][0]["decisions"]
    assert [(d["name"], d["keep"]) for d in decisions] == [(n, i < 2) for i, n in enumerate(names)]
    assert planned.envelope["result"]["targets"][0]["stores"][0]["foreign"] == ["postgresql/notes.txt"]

    applied = run_cli("prune")
    assert applied.code == 0, applied.envelope
    applied_store = applied.envelope["result"]["targets"][0]["stores"][0]
    assert applied_store["decisions"] == decisions
    remaining = sorted(p.name for p in local_lab.iterdir())
    removed = {n for n in names[2:]} | {f"{n}.sha256" for n in names[2:]}
    assert remaining == sorted(set(before) - removed)
    assert "notes.txt" in remaining and any(n.startswith("pg-other-") for n in remaining)

    log = run_cli("log", "--kind", "prune").envelope["result"]["operations"]
    assert sorted(o["details"]["name"] for o in log) == sorted(names[2:])
    assert all(o["status"] == "ok" and o["details"]["reason"] == "outside the policy" for o in log)


def test_protected_backups_survive(local_lab):
    kept_by_rule = [make_backup(local_lab, NOW - timedelta(hours=i)) for i in range(2)]
    protected = make_backup(local_lab, NOW - timedelta(hours=20), protected=True)
    doomed = make_backup(local_lab, NOW - timedelta(hours=30))
    assert run_cli("prune").code == 0
    names = {p.name for p in local_lab.iterdir()}
    assert set(kept_by_rule) | {protected, f"{protected}.protected"} <= names
    assert doomed not in names


def test_a_newer_file_without_its_sidecar_never_displaces_the_newest_good_backup(local_lab):
    bad = make_backup(local_lab, NOW, sidecar=False)  # not a backup at all (issue 30): foreign, never pruned
    good = make_backup(local_lab, NOW - timedelta(hours=1))
    config_for(local_lab.parent.parent, {"here": {"kind": "local", "path": str(local_lab.parent)}}, policy={"keep_last": 1})
    result = run_cli("prune")
    assert result.code == 0
    store = result.envelope["result"]["targets"][0]["stores"][0]
    decisions = {d["name"]: d for d in store["decisions"]}
    assert list(decisions) == [good] and decisions[good]["keep"]
    assert f"postgresql/{bad}" in store["foreign"]
    assert (local_lab / good).exists() and (local_lab / bad).exists()


def test_stale_target_is_refused_unless_forced(local_lab):
    names = [make_backup(local_lab, NOW - timedelta(days=3, hours=i)) for i in range(4)]
    refused = run_cli("prune")
    assert refused.code == 3
    assert refused.envelope["errors"][0]["code"] == "stale_target"
    assert "--force" in refused.envelope["errors"][0]["hint"]
    assert all((local_lab / n).exists() for n in names)
    forced = run_cli("prune", "--force")
    assert forced.code == 0
    assert sorted(p.name for p in local_lab.iterdir() if not p.name.endswith(".sha256")) == sorted(names[:2])


def test_stale_partials_are_removed_and_reported(local_lab):
    make_backup(local_lab, NOW)
    old_partial = local_lab / (naming.pg_dump_name("app", NOW - timedelta(days=1)) + ".partial")
    old_partial.write_bytes(b"half")
    past = time.time() - 86400
    os.utime(old_partial, (past, past))
    fresh_partial = local_lab / (naming.pg_dump_name("app", NOW - timedelta(minutes=5)) + ".partial")
    fresh_partial.write_bytes(b"a run may still own this")
    result = run_cli("prune")
    assert result.envelope["result"]["targets"][0]["stores"][0]["stale_partials"] == [f"postgresql/{old_partial.name}"]
    assert not old_partial.exists()
    assert fresh_partial.exists()


def test_a_locked_target_is_refused(local_lab):
    from bak.locks import target_lock

    make_backup(local_lab, NOW)
    with target_lock("db", "create"):
        result = run_cli("prune")
    assert result.code == 3
    assert result.envelope["errors"][0]["code"] == "lock_held"


def test_prune_over_ssh(sshd, bak_home):
    known = sshd.trust(bak_home / "known_hosts")
    remote = bak_home / "remote"
    config_for(bak_home, {"nfs": {"kind": "ssh", "host": "box", "path": str(remote)}},
               hosts={"box": sshd.host_config(known)})
    folder = remote / "postgresql"
    names = [make_backup(folder, NOW - timedelta(hours=6 * i)) for i in range(4)]
    protected = make_backup(folder, NOW - timedelta(hours=30), protected=True)
    (folder / "README").write_text("foreign")
    result = run_cli("prune")
    assert result.code == 0, result.envelope
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([*names[:2], *(f"{n}.sha256" for n in names[:2]), protected, f"{protected}.sha256",
                           f"{protected}.protected", "README"])


def test_simulate_from_stdin_accepts_names_and_times():
    names = "\n".join([naming.pg_dump_name("app", datetime(2026, 11, 30, 12)), "2026-11-30T06:00:00",
                       naming.vzdump_name(100, datetime(2026, 11, 29, 2))])
    result = run_cli("prune", "--simulate", "--keep-daily", "1", stdin=names)
    assert result.code == 0, result.envelope
    assert [d["keep"] for d in result.envelope["result"]["decisions"]] == [True, False, False]
    bad = run_cli("prune", "--simulate", "--keep-daily", "1", stdin="yesterday\n")
    assert bad.code == 2 and bad.envelope["errors"][0]["where"] == "stdin:1"


def test_simulate_generated_schedule():
    result = run_cli("prune", "--simulate", "--keep-daily", "7", "--keep-weekly", "4", "--every", "6h", "--days", "60")
    assert result.code == 0
    assert result.envelope["result"]["total"] == 240 and result.envelope["result"]["kept"] == 11
    assert run_cli("prune", "--simulate", "--every", "6h").code == 2
    assert run_cli("prune", "--keep-daily", "3").code == 2


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hours=st.lists(st.integers(0, 24 * 60), min_size=1, max_size=25, unique=True),
       policy=st.fixed_dictionaries({}, optional={"keep_last": st.integers(0, 3), "keep_daily": st.integers(0, 4),
                                                  "keep_weekly": st.integers(0, 3)}))
def test_apply_removes_exactly_what_the_dry_run_planned(bak_home, hours, policy):
    dest = bak_home / f"dest-{abs(hash((tuple(hours), tuple(sorted(policy.items())))))}"
    folder = dest / "postgresql"
    for h in hours:
        make_backup(folder, NOW - timedelta(hours=h))
    config_for(bak_home, {"here": {"kind": "local", "path": str(dest)}}, policy=policy, interval="1w")
    plan = run_cli("prune", "--dry-run", "--force").envelope["result"]["targets"][0]["stores"][0]["decisions"]
    run_cli("prune", "--force")
    remaining = {p.name for p in folder.iterdir() if not p.name.endswith(".sha256")}
    assert remaining == {d["name"] for d in plan if d["keep"]}
