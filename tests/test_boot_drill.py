"""Boot drills of Proxmox guests over real SSH against the stand-in PVE tools: the scratch copy is restored,
its links set down, started, waited for (guest agent / a command in the container), checked from inside,
then destroyed in every case, a killed bak included (the keeper on the host does it)."""

import json
import os
import signal
import time

import pytest
import yaml

from conftest import bak_subprocess, run_cli
from test_proxmox import pve_lab, state

NGINX = {"systemctl is-active nginx": {"out": "active\n"}}
NET = "virtio=BC:24:11:00:01:03,bridge=vmbr0,firewall=1"


@pytest.fixture
def lab(tmp_path, bak_home):
    def vm(name, os_model, agent=True):
        return {"name": name, "status": "running", "lock": None, "disk_kib": 256, "os": os_model,
                "config": {**({"agent": "1"} if agent else {}), "net0": NET, "ostype": "l26"}}

    def target(name, vmid, **options):
        return {"name": name, "method": "vzdump", "host": "pve", "destinations": ["pve-local"],
                "vzdump": {"vmid": vmid, "storage": "local", "restore_vmid_range": [9000, 9010], **options}}

    root, nfs, server = pve_lab(
        tmp_path, bak_home,
        {"103": vm("app", {"agent": True, "boot_s": 1, "commands": NGINX}),
         "104": vm("mute", {"agent": False}),
         "105": vm("sick", {"agent": True, "commands": {"systemctl is-active nginx": {"out": "failed\n", "code": 3}}}),
         "106": vm("plain", {"agent": True}, agent=False),
         "107": {"name": "blank", "status": "stopped", "lock": None, "disk_kib": 256, "config": {"agent": "1"}},
         "201": {"name": "proxy", "status": "running", "lock": None, "type": "lxc", "os": {},
                 "config": {"net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:02:01,ip=dhcp,type=veth"}}},
        [target("vm-103", 103, boot_check={"command": ["systemctl", "is-active", "nginx"], "output": "active"}),
         target("vm-104", 104, boot_timeout=6),
         target("vm-105", 105, boot_check={"command": ["systemctl", "is-active", "nginx"], "output": "active"}),
         target("vm-106", 106),
         target("vm-107", 107, boot_timeout=8, boot_drill=True),
         target("ct-201", 201, guest="lxc", boot_check={"command": ["cat", "/etc/hostname"], "output": "ct201"})])
    before = set(_keeper_folders())
    yield root
    server.stop()
    assert set(_keeper_folders()) <= before


def scratch_left(root):
    """Scratch guests, their disks and the keepers' folders still on the host."""
    current = state(root)
    return ([vmid for vmid in current["vms"] if int(vmid) >= 9000] + [p.name for p in (root / "images").glob("vm-90*")]
            + [p.name for p in (root / "ct").glob("90*")] + [p.name for p in _keeper_folders() if p.stat().st_mtime >= _STARTED])


_STARTED = time.time() - 5  # keepers of this run only (another run's may exist meanwhile)


def _keeper_folders():
    from pathlib import Path

    return [p for folder in {Path("/tmp"), Path(os.environ.get("TMPDIR", "/tmp"))} for p in folder.glob("bak-scratch.*")]


def test_a_bootable_vm_and_a_container_pass_their_boot_drill(lab):
    root = lab
    for name in ("vm-103", "ct-201"):
        assert run_cli("create", "--target", name).code == 0
    drilled = run_cli("drill", "--target", "vm-103", "--target", "ct-201", "--boot")
    assert drilled.code == 0, drilled.envelope
    vm, ct = drilled.envelope["result"]["drills"]
    for entry in (vm, ct):
        assert entry["passed"] and entry["scratch_removed"] and entry["boot"]["answered"]
        assert entry["boot"]["links_down"] == ["net0"] and entry["boot"]["check"]["ok"]
        assert isinstance(entry["boot"]["boot_s"], float)
    assert vm["boot"]["boot_s"] >= 1  # the guest's agent answers a second after its start
    assert vm["boot"]["check"]["output"] == "active\n" and ct["boot"]["check"]["output"] == "ct201\n"
    calls = (root / "calls.log").read_text().splitlines()
    scratch = str(vm["scratch_vmid"])
    order = [next(i for i, line in enumerate(calls) if line.startswith(prefix)) for prefix in (
        f"qmrestore local:backup/{vm['backup']} {scratch} --unique 1", f"qm set {scratch} --net0 ",
        f"qm start {scratch}", f"qm guest cmd {scratch} ping", f"qm guest exec {scratch} --timeout 300 -- systemctl")]
    assert order == sorted(order)
    assert "link_down=1" in calls[order[1]] and "BC:24:11:00:01:03" not in calls[order[1]]  # --unique: a new MAC
    assert any(line.startswith(f"pct exec {ct['scratch_vmid']} -- true") for line in calls)
    assert scratch_left(root) == []

    log = run_cli("log", "--kind", "drill").envelope["result"]["operations"]
    journaled = {r["target"]: r for r in log}
    assert journaled["vm-103"]["status"] == "ok" and journaled["vm-103"]["details"]["boot"]["check"]["ok"]
    assert journaled["vm-103"]["details"]["boot"]["boot_s"] == vm["boot"]["boot_s"]
    status = {t["target"]: t for t in run_cli("status").envelope["result"]["targets"]}
    assert status["vm-103"]["proven_rpo"]["backup"] == vm["backup"] and status["vm-103"]["proven_rpo"]["booted"]
    plan = {s["target"]: s for s in run_cli("dr", "plan").envelope["result"]["steps"]}
    assert plan["ct-201"]["backup"]["drilled"] and plan["ct-201"]["backup"]["booted"]


def test_a_boot_drill_fails_with_its_reason_and_leaves_no_scratch_guest(lab):
    root = lab
    for name in ("vm-104", "vm-105", "vm-106", "vm-107"):
        assert run_cli("create", "--target", name).code == 0
    drilled = run_cli("drill", "--target", "vm-104", "--target", "vm-105", "--target", "vm-106", "--target", "vm-107",
                      "--boot")
    assert drilled.code == 1
    rows = {d["target"]: d for d in drilled.envelope["result"]["drills"]}
    errors = {e["where"]: e for e in drilled.envelope["errors"]}
    assert errors["vm-104"]["code"] == "boot_timeout" and "within 6s" in errors["vm-104"]["message"]
    assert "QEMU guest agent is not running" in errors["vm-104"]["message"]
    assert errors["vm-105"]["code"] == "boot_check_failed" and "exit code 3" in errors["vm-105"]["message"]
    assert rows["vm-105"]["boot"]["check"]["output"] == "failed\n" and rows["vm-105"]["boot"]["answered"]
    assert errors["vm-106"]["code"] == "boot_no_agent" and "qm set 106 --agent enabled=1" in errors["vm-106"]["hint"]
    assert errors["vm-107"]["code"] == "boot_timeout"  # boot_drill: true, and nothing on its disk boots
    for row in rows.values():
        assert not row["passed"] and row["scratch_removed"]
    assert scratch_left(root) == []
    journaled = {r["target"]: r for r in run_cli("log", "--kind", "drill").envelope["result"]["operations"]}
    assert journaled["vm-105"]["status"] == "failed"
    assert journaled["vm-105"]["details"]["boot"]["check"]["exit_code"] == 3  # what it measured is journaled
    status = {t["target"]: t for t in run_cli("status").envelope["result"]["targets"]}
    assert status["vm-105"]["proven_rpo"] is None  # a backup whose guest does not work is not proven


@pytest.mark.parametrize("when, how", [("booting", signal.SIGKILL), ("booting", signal.SIGTERM),
                                       ("booting", signal.SIGINT), ("restoring", signal.SIGKILL)])
def test_a_drill_stopped_midway_leaves_no_scratch_guest(lab, when, how):
    root = lab
    assert run_cli("create", "--target", "vm-104").code == 0
    config = yaml.safe_load(open(os.environ["BAK_CONFIG"]))
    config["targets"][1]["vzdump"]["boot_timeout"] = 600  # it would wait ten minutes for an agent that never answers
    yaml.safe_dump(config, open(os.environ["BAK_CONFIG"], "w"))
    if when == "restoring":
        current = state(root)
        current["slow_restore_s"] = 600
        (root / "state.json").write_text(json.dumps(current))
    proc = bak_subprocess("drill", "--target", "vm-104", "--boot", "--json",
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while True:
            scratch = {v: g for v, g in state(root)["vms"].items() if int(v) >= 9000}
            if when == "booting" and any(g["status"] == "running" for g in scratch.values()):
                break
            if when == "restoring" and any(g.get("lock") == "create" for g in scratch.values()):
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the drill never got there"
            time.sleep(0.2)
        proc.send_signal(how)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if how == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == (143 if how == signal.SIGTERM else 130)
        assert json.loads(out)["errors"][0]["code"] == "interrupted"
    deadline = time.monotonic() + 90  # a killed bak: the keeper stops the restore, unlocks and destroys
    while scratch_left(root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert scratch_left(root) == []
    assert state(root)["vms"]["104"]["status"] == "running"  # the original is untouched
