"""wizard setup (answers file) and wizard strategy (3-2-1 table, advice, storage estimate)."""

import time

import yaml

from bak.config import example_text
from conftest import run_cli, write_config

ANSWERS = {
    "hosts": {"pve": {"address": "pve.example.invalid", "key_file": "~/.ssh/id_ed25519"},
              "store": {"address": "store.example.invalid", "key_file": "~/.ssh/id_ed25519"}},
    "destinations": {"pve-local": {"kind": "proxmox", "host": "pve", "storage": "local", "medium": "zfs"},
                     "local": {"kind": "local", "path": "/srv/backups", "medium": "ssd"},
                     "nfs": {"kind": "ssh", "host": "store", "path": "/mnt/nfs/backups", "medium": "nfs", "offsite": True}},
    "copies": ["local", "nfs"],
    "pve": {"host": "pve", "storage": "local", "destination": "pve-local", "vms": [100, 103]},
    "databases": [{"name": "app", "host": "store", "user": "backup", "password": {"pgpass": "~/.pgpass"}}],
    "folders": [{"name": "files-main", "host": "local", "source": "/home/r2d2/projects"}],
    "vault": {"path": "~/Documents/Obsidian", "remotes": ["origin"]},
    "claude_config": "~/.claude",
    "docker_volumes": [{"container": "grafana", "volume": "grafana-data"}],
}


def test_answers_file_writes_a_valid_config_and_never_overwrites_silently(bak_home):
    answers = bak_home / "answers.yaml"
    answers.write_text(yaml.safe_dump(ANSWERS))
    out = bak_home / "new-config.yaml"
    result = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(out))
    assert result.code == 0, result.envelope
    assert result.envelope["result"]["targets"] == ["vm-100", "vm-103", "pg-app", "files-main", "vault", "claude-config",
                                                    "docker-grafana"]
    assert run_cli("config", "check", "--config", str(out)).code == 0
    written = yaml.safe_load(out.read_text())
    vm = next(t for t in written["targets"] if t["name"] == "vm-100")
    assert vm["destinations"] == ["pve-local", "local", "nfs"] and vm["interval"] == "1d"
    assert written["policies"]["pg"] == {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12}
    assert {s["name"]: s.get("cron") or "on_commit" for s in written["schedules"]}["pg-dump"] == "0 */6 * * *"
    assert out.stat().st_mode & 0o777 == 0o600

    again = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(out))
    assert again.code == 3 and again.envelope["errors"][0]["code"] == "would_overwrite"
    forced = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(out), "--force")
    assert forced.code == 0
    assert yaml.safe_load(open(forced.envelope["result"]["previous"])) == written


def test_bad_answers_and_no_terminal_are_bad_input(bak_home):
    answers = bak_home / "answers.yaml"
    answers.write_text(yaml.safe_dump({"folders": [{"name": "x;y", "source": "/a"}],
                                       "destinations": {"d": {"kind": "local", "path": "/b"}}}))
    bad = run_cli("wizard", "setup", "--answers", str(answers), "--output", str(bak_home / "c.yaml"))
    assert bad.code == 2 and "folders[0].name" in {e["where"] for e in bad.envelope["errors"]}  # the answer at fault
    assert not (bak_home / "c.yaml").exists()
    no_tty = run_cli("wizard", "setup", "--output", str(bak_home / "c.yaml"))
    assert no_tty.code == 2 and "--answers" in no_tty.envelope["errors"][0]["message"]


def test_strategy_on_the_example_homelab_reproduces_the_321_table_honestly(bak_home):
    (bak_home / "config.yaml").write_text(example_text())
    result = run_cli("wizard", "strategy")
    assert result.code == 1  # two targets have a single copy, and one's "offsite" copy is on its own host
    rows = {r["target"]: r for r in result.envelope["result"]["rows"]}
    assert (rows["vm-103"]["data"], rows["vm-103"]["local"], rows["vm-103"]["offsite"], rows["vm-103"]["ok"]) == \
        ("VMs", ["pve-local"], ["nfs"], True)
    # The NFS share lives on VM 104, like the database: marked offsite, it is not off-site for pg-app.
    assert (rows["pg-app"]["data"], rows["pg-app"]["local"], rows["pg-app"]["offsite"]) == \
        ("PostgreSQL", ["store-local", "nfs"], [])
    assert rows["pg-app"]["gaps"] == ["1 offsite"]
    assert rows["pg-app"]["contradicted"] == ["nfs is marked offsite but is on the same host as the data (store)"]
    assert (rows["vault"]["local"], rows["vault"]["offsite"], rows["vault"]["ok"]) == (["pc-local"], ["nfs", "git:origin"], True)
    assert (rows["claude-config"]["data"], rows["claude-config"]["ok"]) == ("Claude Code config", True)
    assert rows["files-main"]["gaps"] == ["3 copies", "2 media"] and rows["docker-grafana"]["copies"] == 2
    flagged = {e["where"] for e in result.envelope["errors"]}
    assert flagged == {"files-main", "docker-grafana", "pg-app"}
    assert 7 + 4 < rows["pg-app"]["kept_copies"] <= 7 + 4 + 12  # daily, weekly, then months not already kept


def test_strategy_measure_estimates_hard_linked_snapshots_by_changed_bytes(bak_home):
    source = bak_home / "src"
    source.mkdir()
    for i in range(10):
        (source / f"f{i}.bin").write_bytes(b"x" * 10000)
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"a": {"kind": "local", "path": str(bak_home / "a"), "medium": "ssd"}},
        "policies": {"p": {"keep_last": 5}},
        "targets": [{"name": "files", "method": "rsync", "destinations": ["a"], "policy": "p",
                     "rsync": {"source": str(source)}}]})
    assert run_cli("create").code == 0
    (source / "f0.bin").write_bytes(b"y" * 20000)
    time.sleep(1.1)
    assert run_cli("create").code == 0
    row = run_cli("wizard", "strategy", "--measure").envelope["result"]["rows"][0]
    assert row["kept_copies"] == 5
    assert row["estimate_bytes"] == 110000 + 20000 * 4  # newest tree + the changed file in each older copy
