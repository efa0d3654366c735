"""What the agent reads stays whole: on a lab of 1,000 backups over 30 targets, every /bak-* script's JSON
envelope is under 20,000 characters (Claude Code keeps about 30,000 of a command's output and drops the
middle of more), with the summaries its prompt promises; when a result is longer, the envelope is a view
and the file it names (0600, in bak's state folder) parses and holds every row.

The scripts run as the plugin runs them (a subprocess, stdout a pipe). The lab is tests/big_lab.py.
"""

import json
import stat
from pathlib import Path

import pytest

import big_lab
from big_lab import script
from conftest import check_envelope

READABLE = 20_000


@pytest.fixture(scope="module")
def lab(tmp_path_factory, postgres):
    home = tmp_path_factory.mktemp("big-lab")
    facts = big_lab.build(home, postgres)
    yield {"home": home, **facts}
    big_lab.drop(postgres)  # the session's cluster is shared: leave it as it was


def read(lab, name: str, *args: str, env: dict | None = None, codes=(0, 1)) -> dict:
    """Run a script; its envelope, checked: whole on stdout, under the limit, nothing on stderr, valid."""
    done = script(lab["home"], name, *args, env=env)
    return checked(done, codes)


def checked(done, codes=(0, 1)) -> dict:
    assert done.returncode in codes, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(done.stdout) < READABLE, f"{len(done.stdout)} characters"
    assert done.stderr == ""  # no progress lines: the agent reads both streams
    assert done.stdout.count("\n") == 1  # compact JSON on a pipe: one line
    envelope = json.loads(done.stdout)
    check_envelope(envelope)
    return envelope


def whole(envelope: dict, home: Path) -> dict:
    """The detail file the view names: 0600, in the state folder's details/, the whole envelope, valid."""
    path = Path(envelope["detail"]["file"])
    assert path.parent == home / "state" / "details"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    full = json.loads(path.read_text())
    check_envelope(full)
    assert "detail" not in full and full["command"] == envelope["command"]
    return full


def test_create_status_and_list(lab):
    made = checked(lab["create"])  # the /bak-create that made the lab: 30 targets, 2 copies each
    assert [t["status"] for t in made["result"]["targets"]] == ["ok"] * 30

    status = read(lab, "status")
    assert status["result"]["summary"] and len(status["result"]["targets"]) == 30
    assert all({"state", "interval_h", "newest", "copies", "last_verify", "last_drill"} <= set(t)
               for t in status["result"]["targets"])
    # The lab's 3-2-1 gap (two folders on one disk) on every target is said once, naming all 30.
    gap = [e for e in status["errors"] if e["message"].startswith("3-2-1 not met")]
    assert len(gap) == 1 and len(gap[0]["where"].split(", ")) == 30

    listing = read(lab, "list")
    summaries = listing["result"]["targets"]
    assert len(summaries) == 30 and sum(t["backups"] for t in summaries) == lab["backups"] == 1000
    assert all(t["oldest"] < t["newest"] and t["bytes"] > 0 and t["unchecked"] == 0 for t in summaries)
    assert len(listing["result"]["backups"]) <= 20 and listing["detail"]["omitted"]["backups"] >= 980
    full = whole(listing, lab["home"])
    assert len(full["result"]["backups"]) == 1000 and full["result"]["targets"] == summaries
    one = read(lab, "list", "--target", "db-03", "--limit", "100")  # what the prompt says to ask for more
    assert {b["target"] for b in one["result"]["backups"]} == {"db-03"}
    assert len(one["result"]["backups"]) == one["result"]["targets"][0]["backups"]



def test_verify_every_backup(lab):
    verify = read(lab, "verify", "--all-backups")
    per_target = verify["result"]["targets"]
    assert len(per_target) == 30 and sum(t["checked"] for t in per_target) == 1000
    assert all(t["failed"] == 0 and t["ok"] == t["checked"] for t in per_target)
    full = whole(verify, lab["home"])
    assert len(full["result"]["checked"]) == 1000 and all(r["ok"] and r.get("sha256") or r.get("files")
                                                           for r in full["result"]["checked"])
    log = read(lab, "log", "--limit", "1000")  # the journal now holds a verify per backup
    assert len(log["result"]["operations"]) < 1000 and log["detail"]["omitted"]["operations"] > 0
    assert len(whole(log, lab["home"])["result"]["operations"]) == 1000
    assert len(read(lab, "log")["result"]["operations"]) <= 50  # by default, the newest 50 (or what fits)
    pg = read(lab, "pg", "verify")
    assert [t["target"] for t in pg["result"]["targets"]] == [f"db-{i:02d}" for i in range(10)]


def test_prune_plan_then_prune(lab):
    plan = read(lab, "prune", "--dry-run")
    targets = plan["result"]["targets"]
    assert len(targets) == 30 and sum(t["kept"] + t["removed"] for t in targets) == 1000
    assert all(sum(t["kept_by"].values()) == t["kept"] and sum(t["removed_because"].values()) == t["removed"]
               for t in targets)
    removing = sum(t["removed"] for t in targets)
    assert removing > 300 and all(not d["keep"] for t in targets for s in t["stores"] for d in s["decisions"])
    full = whole(plan, lab["home"])
    decisions = [d for t in full["result"]["targets"] for s in t["stores"] for d in s["decisions"]]
    assert len(decisions) == 1000 and sum(not d["keep"] for d in decisions) == removing


def test_plans_drills_and_the_rest(lab, tmp_path):
    plan = read(lab, "dr", "plan")
    assert len(plan["result"]["steps"]) == 30 and "rto_s" in plan["result"]
    assert all({"target", "restores", "after", "backup", "source", "problems"} <= set(s) for s in plan["result"]["steps"])
    assert all(s["commands"]["bak"] for s in whole(plan, lab["home"])["result"]["steps"])  # the file keeps them

    drill = read(lab, "drill")
    assert len(drill["result"]["drills"]) == 30 and all(d["passed"] for d in drill["result"]["drills"])
    disaster = read(lab, "dr", "drill")
    assert disaster["result"]["passed"] == 30

    strategy = read(lab, "wizard", "strategy")
    assert len(strategy["result"]["rows"]) == 30
    sync = read(lab, "sync", "--dry-run", "--to", "offsite")
    assert sum(t["to_copy"] for t in sync["result"]["targets"]) == sum(
        t["backups"] for t in read(lab, "list", "--destination", "disk")["result"]["targets"]
        if t["target"] in {"db-00", "db-01", "conf-00", "conf-01"})
    assert read(lab, "schedule", "show")["result"]["jobs"]
    assert read(lab, "report")["result"]["path"]
    assert read(lab, "metrics")["result"]["samples"] > 100
    assert read(lab, "doctor")["result"]["checks"]
    assert read(lab, "discover")["result"]["items"] is not None
    assert read(lab, "config", "check")["result"]["targets"] == 30
    assert read(lab, "config", "reference")["result"]["text"]
    assert read(lab, "ssh", "check")["result"]["hosts"] == []
    assert read(lab, "restore", "--dry-run", "--target", "conf-03")["result"]["dry_run"]
    assert read(lab, "destination", "init", "spare")["result"]["destination"] == "spare"
    (tmp_path / "home").mkdir()
    installed = read(lab, "skill", "install", env={"HOME": str(tmp_path / "home")})
    assert len(installed["result"]["commands"]) == 23
    fresh = {"BAK_CONFIG": str(tmp_path / "fresh" / "config.yaml"), "BAK_STATE_DIR": str(tmp_path / "fresh" / "state")}
    back = read(lab, "bootstrap", "--from", str(lab["home"] / "disk"), env=fresh)
    assert back["result"]["operations"] >= 30  # the journal as the last create left it in the kit

    pruned = read(lab, "prune")  # last: it removes what the plan said
    assert sum(t["removed"] for t in pruned["result"]["targets"]) > 300
