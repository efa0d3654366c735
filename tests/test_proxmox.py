"""Proxmox VMs and containers over real SSH against the stand-in PVE tools: create, list, copy,
verify, restore (from the Proxmox storage or from a copy), drill, prune."""

import bz2
import filecmp
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml
import zstandard
from dissect.archive.vma import VMA  # another project's VMA reader: what the stand-in writes, Proxmox would write

from hypothesis import given, settings
from hypothesis import strategies as st

from bak.errors import CommandFailed, VerifyFailed
from bak.methods import vzdump
from bak.stores.proxmox import parse_pvesm_status
from conftest import REPO, _make_sshd, need, run_cli, write_config

STANDINS = REPO / "tests" / "standins" / "pve"


def pve_lab(tmp_path, bak_home, vms, targets, storages=None, policies=None, state_extra=None):
    """The stand-in PVE host behind a real sshd, its state and a config: `pve-local` (storage `local`) and an
    off-site `nfs` copy. Returns (state root, nfs folder, sshd)."""
    need("zstd", "tar", "dd")  # the stand-ins pipe through zstd and GNU tar; a restore from a copy stages with dd
    root = tmp_path / "pve"
    (root / "storage-local").mkdir(parents=True)
    state = {"node": "pve", "header_style": "new",
             "storages": {"local": {"type": "dir", "path": str(root / "storage-local"), "total_kib": 400000},
                          "local-lvm": {"type": "lvmthin", "path": str(root / "lvm"), "total_kib": 10**9,
                                        "content": ["images", "rootdir"]}, **(storages or {})},
             "vms": vms, **(state_extra or {})}
    (root / "state.json").write_text(json.dumps(state))
    server = _make_sshd(tmp_path / "sshd", path_dirs=[str(STANDINS)], env={"BAK_PVE_ROOT": str(root)})
    known = server.trust(bak_home / "known_hosts")
    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": {"pve": server.host_config(known)},
        "destinations": {"pve-local": {"kind": "proxmox", "host": "pve", "storage": "local", "node": "pve", "medium": "zfs"},
                         "nfs": {"kind": "ssh", "host": "pve", "path": str(tmp_path / "nfs"), "medium": "nfs", "offsite": True}},
        "policies": policies or {"vm": {"keep_last": 1}}, "targets": targets})
    return root, tmp_path / "nfs", server


@pytest.fixture
def pve(tmp_path, bak_home):
    root, nfs, server = pve_lab(
        tmp_path, bak_home,
        {"100": {"name": "web", "status": "running", "lock": None,
                 "disks": [{"name": "scsi0", "size": 4 << 20}, {"name": "scsi1", "size": 307712}]},
         "101": {"name": "db", "status": "stopped", "lock": None, "disk_kib": 512},
         "102": {"name": "stuck", "status": "running", "lock": "backup", "disk_kib": 512},
         "200": {"name": "proxy", "status": "running", "lock": None, "type": "lxc"},
         "9000": {"name": "taken", "status": "stopped", "lock": None}},
        [{"name": f"vm-{vmid}", "method": "vzdump", "host": "pve", "destinations": ["pve-local", "nfs"],
          "policy": "vm", "vzdump": {"vmid": vmid, "storage": "local", "notes_template": "{{guestname}} daily",
                                     "restore_vmid_range": [9000, 9010]}} for vmid in (100, 101, 102)] +
        [{"name": "ct-200", "method": "vzdump", "host": "pve", "destinations": ["pve-local", "nfs"],
          "vzdump": {"vmid": 200, "guest": "lxc", "storage": "local", "restore_vmid_range": [9000, 9010]}}])
    yield root, nfs
    server.stop()


def copy_of(nfs, name):
    """A file on the NFS destination, wherever bak's catalogue puts it under the destination's root."""
    return next(nfs.rglob(name))


def state(root):
    return json.loads((root / "state.json").read_text())


def test_create_list_copy_verify_restore_drill(pve):
    root, nfs = pve
    created = run_cli("create", "--target", "vm-100")
    assert created.code == 0, created.envelope
    entry = created.envelope["result"]["targets"][0]
    name = entry["name"]
    assert name.startswith("vzdump-qemu-100-") and name.endswith(".vma.zst")
    assert [c["ok"] for c in entry["copies"]] == [True, True]
    archive = root / "storage-local" / "dump" / name
    assert copy_of(nfs, name).read_bytes() == archive.read_bytes()
    assert copy_of(nfs, f"{name}.sha256").read_text().split()[0] == entry["sha256"]
    # The .log is the guest's own log (VZDump.pm: only the lines logged with $logfd), not the job's lines
    assert (archive.parent / name.replace(".vma.zst", ".log")).read_text().splitlines()[-1].endswith(
        "INFO: Finished Backup of VM 100 (00:00:01)")
    assert state(root)["vms"]["100"]["lock"] is None
    written = VMA(io.BytesIO(decompress(archive.read_bytes())))
    assert b"name: web" in written.config("qemu-server.conf")
    assert [(d.name, d.open().read()) for d in written.devices()] == [
        (f"drive-scsi{i}", (root / "images" / f"vm-100-disk-{i}.raw").read_bytes()) for i in (0, 1)]

    listed = run_cli("list", "--vmid", "100").envelope["result"]["backups"]
    assert {(b["store"], b["name"]) for b in listed} == {("pve-local", name), ("nfs", name)}
    on_pve = next(b for b in listed if b["store"] == "pve-local")
    assert f"{name}.notes" in on_pve["sidecars"]

    verified = run_cli("verify", "--target", "vm-100")
    assert verified.code == 0, verified.envelope
    rows = {r["store"]: r for r in verified.envelope["result"]["checked"]}
    assert rows["nfs"]["extents"] >= 1 and rows["nfs"]["configs"] == ["qemu-server.conf"]
    assert rows["pve-local"]["devices"] == ["drive-scsi0", "drive-scsi1"]

    refused = run_cli("restore", "--target", "vm-100", "--into", "101")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "would_overwrite"
    running = run_cli("restore", "--target", "vm-100", "--into", "100", "--force")
    assert running.code == 3 and running.envelope["errors"][0]["code"] == "guest_running"
    restored = run_cli("restore", "--target", "vm-100", "--from", "pve-local")
    assert restored.code == 0, restored.envelope
    assert restored.envelope["result"]["vmid"] == 9001  # 9000 is taken: first free in the range
    assert state(root)["vms"]["9001"]["name"] == "web"

    drilled = run_cli("pg", "drill")  # pg drill only takes pg targets
    assert drilled.envelope["result"]["drills"] == []
    drill = run_cli("drill", "--target", "vm-100")
    assert drill.code == 0, drill.envelope
    assert drill.envelope["result"]["drills"][0]["scratch_vmid"] == 9002
    assert "9002" not in state(root)["vms"]


def replace_copy(nfs, name, data, sidecar=True):
    """Puts `data` in place of the copy; with `sidecar`, a .sha256 that matches it, so only the format check can object."""
    copy_of(nfs, name).write_bytes(data)
    if sidecar:
        copy_of(nfs, f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")


compress = zstandard.ZstdCompressor(write_checksum=True).compress


def decompress(data):
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 28)


def test_corrupt_copies_are_caught(pve):
    root, nfs = pve
    name = run_cli("create", "--target", "vm-100").envelope["result"]["targets"][0]["name"]
    good = copy_of(nfs, name).read_bytes()
    raw = decompress(good)
    header_size = int.from_bytes(raw[56:60], "big")
    for label, data, message in [
        ("flipped header byte", compress(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]), "wrong main header checksum"),
        ("wrong md5", compress(raw[:32] + b"\0" * 16 + raw[48:]), "wrong main header checksum"),
        ("flipped extent header byte", compress(raw[:header_size + 50] + bytes([raw[header_size + 50] ^ 1])
                                                + raw[header_size + 51:]), "extent 0 (byte"),
        ("truncated", compress(raw[: len(raw) - 4096]), "truncated"),
        ("last extent missing", compress(raw[:header_size + 512 + int.from_bytes(raw[header_size + 6:header_size + 8], "big") * 4096]),
         "incomplete archive: cluster"),
    ]:
        replace_copy(nfs, name, data)
        result = run_cli("verify", "--target", "vm-100")
        assert result.code == 1, label
        bad = [r for r in result.envelope["result"]["checked"] if not r["ok"]]
        assert [r["store"] for r in bad] == ["nfs"], label
        assert message in result.envelope["errors"][0]["message"], label
    copy_of(nfs, name).write_bytes(good[: len(good) // 2])
    truncated_file = run_cli("verify", "--target", "vm-100")
    assert truncated_file.code == 1 and truncated_file.envelope["result"]["checked"][-1]["format"] == "failed"


def test_locked_vm_gives_the_qm_unlock_hint(pve):
    result = run_cli("create", "--target", "vm-102")
    assert result.code == 1
    error = result.envelope["errors"][0]
    assert error["code"] == "vzdump_locked" and "qm unlock 102" in error["hint"]


def test_full_storage_is_refused_before_vzdump_starts(pve):
    root, _ = pve
    assert run_cli("create", "--target", "vm-101").code == 0
    current = state(root)
    archive_kib = sum(p.stat().st_size for p in (root / "storage-local").rglob("*") if p.is_file()) // 1024
    current["storages"]["local"]["total_kib"] = archive_kib  # exactly full: 0 KiB available
    (root / "state.json").write_text(json.dumps(current))
    calls_before = (root / "calls.log").read_text().count("vzdump ")
    result = run_cli("create", "--target", "vm-101")
    assert result.code == 3 and result.envelope["errors"][0]["code"] == "no_space"
    assert (root / "calls.log").read_text().count("vzdump ") == calls_before


def test_prune_removes_with_pvesm_free(pve):
    root, nfs = pve
    for _ in range(3):
        assert run_cli("create", "--target", "vm-101").code == 0
        time.sleep(1.1)
    result = run_cli("prune", "--target", "vm-101")
    assert result.code == 0, result.envelope
    frees = [line for line in (root / "calls.log").read_text().splitlines() if line.startswith("pvesm free")]
    assert len(frees) == 2
    assert len(list((root / "storage-local" / "dump").glob("*.vma.zst"))) == 1
    assert len(list(nfs.rglob("*.vma.zst"))) == 1


# --- containers ---------------------------------------------------------------------------------
def tree(root, skip=()):
    """{relative path: (kind, mode, content or link target, mtime)}: what a restore must give back."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = os.path.join(folder, entry)
            relative = os.path.relpath(path, root)
            if relative in skip:
                continue
            st = os.lstat(path)
            if os.path.islink(path):
                found[relative] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[relative] = ("dir", st.st_mode & 0o7777)
            else:
                found[relative] = ("file", st.st_mode & 0o7777, hashlib.sha256(open(path, "rb").read()).hexdigest(),
                                   int(st.st_mtime))
    return found


def test_lxc_create_verify_restore_drill(pve):
    root, nfs = pve
    created = run_cli("create", "--target", "ct-200")
    assert created.code == 0, created.envelope
    name = created.envelope["result"]["targets"][0]["name"]
    assert name.startswith("vzdump-lxc-200-") and name.endswith(".tar.zst")
    source = root / "ct" / "200" / "rootfs"

    # Read back by Python's tarfile, not by bak: pct.conf first, every file's bytes, vzdump's excludes
    with tarfile.open(fileobj=io.BytesIO(decompress(copy_of(nfs, name).read_bytes()))) as tar:
        members = tar.getmembers()
        assert members[0].name == "./etc/vzdump/pct.conf"
        assert "hostname: proxy" in tar.extractfile(members[0]).read().decode()
        for member in members[2:]:
            if member.isfile():
                assert tar.extractfile(member).read() == (source / member.name).read_bytes(), member.name
            elif member.issym():
                assert member.linkname == os.readlink(source / member.name)
        names = [m.name for m in members]
        assert "./tmp" in names and "./tmp/scratch" not in names and any(m.sparse for m in members)

    verified = run_cli("verify", "--target", "ct-200")
    assert verified.code == 0, verified.envelope
    rows = {r["store"]: r for r in verified.envelope["result"]["checked"]}
    assert rows["nfs"]["members"] == len(members) and rows["nfs"]["configs"] == ["pct.conf"]
    assert rows["pve-local"]["members"] == 1 and rows["pve-local"]["format"] == "ok"

    restored = run_cli("restore", "--target", "ct-200")
    assert restored.code == 0, restored.envelope
    assert restored.envelope["result"]["vmid"] == 9001 and "staged" not in restored.envelope["result"]
    assert state(root)["vms"]["9001"]["name"] == "proxy"
    assert tree(root / "ct" / "9001" / "rootfs") == tree(source, skip={"tmp/scratch"})

    drill = run_cli("drill", "--target", "ct-200", "--from", "nfs")
    assert drill.code == 0, drill.envelope
    entry = drill.envelope["result"]["drills"][0]
    assert entry["store"] == "nfs" and entry["scratch_vmid"] == 9002 and entry["passed"]
    assert "9002" not in state(root)["vms"] and not (root / "ct" / "9002").exists()
    assert not list((root / "storage-local" / "dump").glob("bak-restore-*"))


def test_lxc_truncated_and_corrupted_copies_are_caught(pve):
    root, nfs = pve
    name = run_cli("create", "--target", "ct-200").envelope["result"]["targets"][0]["name"]
    good = copy_of(nfs, name).read_bytes()
    raw = decompress(good)
    offsets = [m.offset for m in tarfile.open(fileobj=io.BytesIO(raw))]
    middle = len(good) // 2
    for label, data, message in [
        ("file cut in half", good[:middle], "truncated archive"),
        ("tar cut at a member boundary", compress(raw[:offsets[6]]), "without the end-of-archive marker"),
        ("tar header byte flipped", compress(raw[:offsets[4] + 20] + b"#" + raw[offsets[4] + 21:]), "wrong header checksum"),
        ("compressed byte flipped", good[:middle] + bytes([good[middle] ^ 0x55]) + good[middle + 1:], "zstd: "),
    ]:
        replace_copy(nfs, name, data)
        result = run_cli("verify", "--target", "ct-200")
        assert result.code == 1, label
        bad = [r for r in result.envelope["result"]["checked"] if not r["ok"]]
        assert [(r["store"], r["format"]) for r in bad] == [("nfs", "failed")], label
        assert message in result.envelope["errors"][0]["message"], (label, result.envelope["errors"])


# --- restore from a copy ---------------------------------------------------------------------------
def test_restore_and_drill_from_the_copy_when_the_proxmox_archive_is_gone(pve):
    root, nfs = pve
    created = run_cli("create", "--target", "vm-100").envelope["result"]["targets"][0]
    name, dump = created["name"], root / "storage-local" / "dump"
    for path in dump.glob(name.split(".")[0] + "*"):
        path.unlink()  # the Proxmox storage lost the archive; only the NFS copy is left
    assert {b["store"] for b in run_cli("list", "--vmid", "100").envelope["result"]["backups"]} == {"nfs"}

    restored = run_cli("restore", "--target", "vm-100", "--from", "nfs")
    assert restored.code == 0, restored.envelope
    result, staged = restored.envelope["result"], restored.envelope["result"]["staged"]
    assert result["vmid"] == 9001 and result["store"] == "nfs"
    assert staged["storage"] == "local" and staged["path"].startswith(f"{dump}/bak-restore-vm-100.")
    assert staged["sha256"] == created["sha256"] and staged["bytes"] == copy_of(nfs, name).stat().st_size and staged["removed"]
    assert f"qmrestore {staged['path']} 9001 --unique 1" in (root / "calls.log").read_text()
    assert not list(dump.glob("bak-restore-*"))
    for disk in (0, 1):  # the restored disks hold the bytes the VM's disks held
        assert filecmp.cmp(root / "images" / f"vm-100-disk-{disk}.raw", root / "images" / f"vm-9001-disk-{disk}.raw",
                           shallow=False)

    drill = run_cli("drill", "--target", "vm-100")  # the newest backup is the copy now
    assert drill.code == 0, drill.envelope
    entry = drill.envelope["result"]["drills"][0]
    assert entry["store"] == "nfs" and entry["scratch_vmid"] == 9002 and entry["passed"]
    assert "9002" not in state(root)["vms"] and not list(dump.glob("bak-restore-*"))
    assert not list((root / "images").glob("vm-9002-*"))


def set_storages(root, **storages):
    current = state(root)
    current["storages"].update(storages)
    (root / "state.json").write_text(json.dumps(current))


def used_kib(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


def test_restore_from_a_copy_stages_where_there_is_room_or_refuses(pve):
    root, nfs = pve
    name = run_cli("create", "--target", "vm-101").envelope["result"]["targets"][0]["name"]
    size_kib = copy_of(nfs, name).stat().st_size // 1024
    stale = root / "storage-local" / "dump" / "bak-restore-vm-101.AbCd1234"
    stale.mkdir()
    (stale / name).write_bytes(b"what a killed restore left")
    tight = {"type": "dir", "path": str(root / "storage-local"), "total_kib": used_kib(root / "storage-local") + size_kib // 2}
    (root / "storage-nas" / "dump").mkdir(parents=True)  # PVE makes dump/ when it activates the storage
    set_storages(root, local=tight, nas={"type": "nfs", "path": str(root / "storage-nas"), "total_kib": size_kib // 2})

    refused = run_cli("restore", "--target", "vm-101", "--from", "nfs")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "no_space", refused.envelope
    assert "local:" in refused.envelope["errors"][0]["message"] and "nas:" in refused.envelope["errors"][0]["message"]
    assert "qmrestore" not in (root / "calls.log").read_text() and "9001" not in state(root)["vms"]
    assert not stale.exists()  # leftovers of a killed restore of this target are removed first

    set_storages(root, nas={"type": "nfs", "path": str(root / "storage-nas"), "total_kib": 10**6})
    restored = run_cli("restore", "--target", "vm-101", "--from", "nfs")
    assert restored.code == 0, restored.envelope
    staged = restored.envelope["result"]["staged"]
    assert staged["storage"] == "nas" and staged["path"].startswith(f"{root}/storage-nas/dump/bak-restore-vm-101.")
    assert staged["removed"] and not list((root / "storage-nas" / "dump").glob("bak-restore-*"))


def test_restore_from_a_bad_copy_restores_nothing_and_leaves_nothing(pve):
    root, nfs = pve
    name = run_cli("create", "--target", "vm-101").envelope["result"]["targets"][0]["name"]
    good = copy_of(nfs, name).read_bytes()
    dump = root / "storage-local" / "dump"

    replace_copy(nfs, name, good[:1000] + bytes([good[1000] ^ 1]) + good[1001:], sidecar=False)
    corrupt = run_cli("restore", "--target", "vm-101", "--from", "nfs")
    assert corrupt.code == 1 and corrupt.envelope["errors"][0]["code"] == "copy_corrupt", corrupt.envelope
    assert "qmrestore" not in (root / "calls.log").read_text()

    raw = decompress(good)
    replace_copy(nfs, name, compress(raw[:len(raw) - 4096]))  # its sidecar matches; the VMA inside is cut
    failed = run_cli("restore", "--target", "vm-101", "--from", "nfs")
    assert failed.code == 1 and "command 'vma extract' failed" in failed.envelope["errors"][0]["message"], failed.envelope
    assert "qmrestore" in (root / "calls.log").read_text()

    copy_of(nfs, f"{name}.sha256").unlink()  # without its sidecar the copy is no backup at all (issue 30)
    unchecked = run_cli("restore", "--target", "vm-101", "--from", "nfs")
    assert unchecked.code == 2 and unchecked.envelope["errors"][0]["code"] == "no_backup", unchecked.envelope
    assert not list(dump.glob("bak-restore-*")) and set(state(root)["vms"]) == {"100", "101", "102", "200", "9000"}


# --- parsing the reference's exact output -----------------------------------------------------
def test_pvesm_status_both_headers():
    new = ("Name             Type     Status           Total (KiB)      Used (KiB) Available (KiB)        %\n"
           "local             dir     active        98497780        12466164        80982068   12.66%\n"
           "local-lvm     lvmthin     active       832888832       104856000       728032832   12.59%\n"
           "nas               nfs     disabled             0               0               0      N/A\n")
    old = ("Name             Type     Status           Total            Used       Available        %\n"
           "local             dir     active        98497780        12466164        80982068   12.66%\n")
    parsed = parse_pvesm_status(new)
    assert parsed["local"] == {"type": "dir", "status": "active", "total": 98497780 * 1024, "used": 12466164 * 1024,
                               "available": 80982068 * 1024}
    assert parsed["nas"]["status"] == "disabled"
    assert parse_pvesm_status(old)["local"] == parsed["local"]


def test_vzdump_output_parsing():
    ok = ("INFO: starting new backup job: vzdump 100 --mode snapshot --storage local --compress zstd\n"
          "INFO: Starting Backup of VM 100 (qemu)\n"
          "INFO: creating vzdump archive '/var/lib/vz/dump/vzdump-qemu-100-2024_01_31-02_00_03.vma.zst'\n"
          "INFO:   5% (1.6 GiB of 32.0 GiB) in 10s, read: 163.8 MiB/s, write: 150.2 MiB/s\n"
          "INFO: archive file size: 2.50GB\nINFO: Finished Backup of VM 100 (00:01:23)\n"
          "INFO: Backup job finished successfully\n")
    run = vzdump.parse_vzdump(ok)
    assert run.ok and run.archive.endswith("vzdump-qemu-100-2024_01_31-02_00_03.vma.zst") and run.size_text == "2.50GB"
    failed = ("ERROR: Backup of VM 100 failed - VM is locked (backup)\nINFO: Failed at 2024-01-31 02:00:04\n"
              "INFO: Backup job finished with errors\n")
    run = vzdump.parse_vzdump(failed)
    assert not run.ok and run.reason == "VM is locked (backup)"
    assert "qm unlock 100" in vzdump.hint_for(run.reason, 100)
    assert "pct unlock 200" in vzdump.hint_for(run.reason, 200, "lxc")
    assert "unable to find VM" in vzdump.parse_vzdump("ERROR: Backup of VM 999 failed - unable to find VM '999'\n").reason


def test_guest_lists_and_argv():
    qm = ("      VMID NAME                 STATUS     MEM(MB)    BOOTDISK(GB) PID       \n"
          "       100 web                  running    2048              32.00 4242      \n"
          "       101 db                   stopped    4096              64.00 0         \n")
    assert vzdump.parse_guest_list(qm) == {100: {"name": "web", "status": "running"}, 101: {"name": "db", "status": "stopped"}}
    unnamed = qm.splitlines()[0] + "\n       105 VM 105               stopped    512                0.00 0         \n"
    assert vzdump.parse_guest_list(unnamed) == {105: {"name": "VM 105", "status": "stopped"}}  # QemuServer.pm vmstatus
    assert vzdump.parse_guest_list("") == {}
    pct = "VMID       Status     Lock         Name\n200        running                 proxy\n"
    assert vzdump.parse_guest_list(pct) == {200: {"name": "proxy", "status": "running"}}
    options = {"vmid": 100, "mode": "snapshot", "compress": "zstd", "storage": "local", "notes_template": "{{guestname}}",
               "protected": True, "bwlimit_kib": 1000}
    assert vzdump.vzdump_argv(options) == ["vzdump", "100", "--mode", "snapshot", "--compress", "zstd", "--storage", "local",
                                           "--prune-backups", "keep-all=1", "--bwlimit", "1000",
                                           "--notes-template", "{{guestname}}", "--protected", "1"]
    assert vzdump.vzdump_argv({**options, "zstd_threads": 0})[8:12] == ["--prune-backups", "keep-all=1", "--zstd", "0"]
    assert vzdump.restore_argv("qemu", "local:backup/x.vma.zst", 9001, storage=None, force=False) == [
        "qmrestore", "local:backup/x.vma.zst", "9001", "--unique", "1"]
    assert vzdump.restore_argv("lxc", "a.tar.zst", 9001, storage="local-lvm", force=True) == [
        "pct", "restore", "9001", "a.tar.zst", "--unique", "1", "--storage", "local-lvm", "--force", "1"]
    assert vzdump.guest_of("vzdump-lxc-200-2024_01_31-02_00_03.tar.zst") == "lxc"
    assert vzdump.host_test_argv("x.vma.zst", "/d/x.vma.zst") == ["zstd", "-t", "-q", "/d/x.vma.zst"]
    assert vzdump.host_test_argv("x.tar.gz", "/d/x.tar.gz") == ["gzip", "-t", "/d/x.tar.gz"]
    assert vzdump.host_test_argv("x.vma", "/d/x.vma") is None
    assert vzdump.stage_argv("/var/lib/vz/dump/bak-restore-vm-1.x/a b") == [
        "dd", "of=/var/lib/vz/dump/bak-restore-vm-1.x/a b", "bs=1M"]
    assert vzdump.parse_dd_bytes("0+9 records in\n0+9 records out\n307200 bytes (307 kB, 300 KiB) copied, 0.01 s, 30 MB/s\n") == 307200
    assert vzdump.parse_dd_bytes("0+0 records in\n0+0 records out\n0 bytes copied, 0.0001 s, 0.0 kB/s\n") == 0
    assert vzdump.parse_dd_bytes("dd: error writing 'x': No space left on device\n") is None
    assert vzdump.stale_stages_argv(["/a/dump", "/b/dump"], "vm-100") == [
        "find", "/a/dump", "/b/dump", "-maxdepth", "1", "-type", "d", "-name", "bak-restore-vm-100.*",
        "-print", "-exec", "rm", "-rf", "--", "{}", "+"]


def test_a_read_error_in_the_feeding_thread_ends_the_stream_and_is_kept():
    class DroppedCopy:
        chunks = [b"first chunk"]

        def read(self, size):
            if self.chunks:
                return self.chunks.pop()
            raise OSError("Socket is closed")

    reader = vzdump.FeederReader(DroppedCopy())
    assert reader.read() == b"first chunk" and reader.read() == b""  # the remote dd sees end of input
    assert isinstance(reader.error, OSError) and reader.size == len(b"first chunk")


def test_staging_prefers_the_targets_storage_then_the_most_free():
    status = parse_pvesm_status(
        "Name             Type     Status           Total (KiB)      Used (KiB) Available (KiB)        %\n"
        "local             dir     active             1000             900             100   90.00%\n"
        "local-lvm     lvmthin     active           100000               0          100000    0.00%\n"
        "nas               nfs     active            10000            5000            5000   50.00%\n"
        "old               dir     disabled              0               0               0      N/A\n"
        "pbs               pbs     active           100000               0          100000    0.00%\n"
        "usb               dir     active            10000            1000            9000   10.00%\n")
    assert vzdump.staging_candidates(status, "local") == [("local", 100 * 1024), ("usb", 9000 * 1024), ("nas", 5000 * 1024)]
    assert vzdump.staging_candidates(status, "nas")[0] == ("nas", 5000 * 1024)


def test_doctor_finds_the_locked_vm_and_says_how_to_fix_it(pve):
    result = run_cli("doctor")
    assert result.code == 1
    rows = {(c["check"], c["subject"]): c for c in result.envelope["result"]["checks"]}
    assert rows[("ssh", "pve")]["level"] == "ok"
    assert rows[("tools", "pve")]["level"] == "ok"
    assert rows[("proxmox lock", "vm-102")]["level"] == "fail" and rows[("proxmox lock", "vm-102")]["fix"].endswith("qm unlock 102")
    assert rows[("proxmox lock", "vm-100")]["level"] == "ok"
    assert rows[("proxmox lock", "ct-200")]["level"] == "ok" and rows[("proxmox lock", "ct-200")]["detail"].startswith("CT 200")
    assert rows[("space", "pve-local")]["level"] == "ok"
    assert [e["where"] for e in result.envelope["errors"]] == ["vm-102"]


# --- Proxmox as its sources say it behaves ----------------------------------------------------------
def standin(root, *argv):
    """A stand-in run directly, as bak's SSH session would run it."""
    return subprocess.run(list(argv), capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{STANDINS}:{os.environ['PATH']}", "BAK_PVE_ROOT": str(root)})


def test_vzdump_prints_its_log_on_stdout_and_only_the_error_on_stderr(pve):
    """The fault model bak must read (pve-common fork_worker/tee_worker): a bak that parsed stderr alone would
    see nothing of a good backup; the create tests pass only because bak reads both streams."""
    root, _ = pve
    good = standin(root, "vzdump", "101", "--mode", "snapshot", "--compress", "zstd", "--storage", "local")
    assert good.returncode == 0 and good.stderr == "" and "INFO: Backup job finished successfully" in good.stdout
    assert re.search(r"INFO: archive file size: \d+KB\n", good.stdout)  # format_size: binary units, KB as integer
    locked = standin(root, "vzdump", "102", "--compress", "zstd", "--storage", "local")
    assert locked.returncode == 255 and locked.stderr == "job errors\n"
    assert "ERROR: Backup of VM 102 failed - VM is locked (backup)" in locked.stdout


def test_two_backups_in_a_row_on_a_storage_keeping_one_both_remain(pve):
    root, _ = pve
    set_storages(root, local={**state(root)["storages"]["local"], "prune-backups": "keep-last=1"})
    names = []
    for _ in range(2):
        created = run_cli("create", "--target", "vm-101")
        assert created.code == 0, created.envelope
        names.append(created.envelope["result"]["targets"][0]["name"])
        time.sleep(1.1)
    dump = root / "storage-local" / "dump"
    assert sorted(p.name for p in dump.glob("*.vma.zst")) == sorted(names) and names[0] != names[1]
    assert (root / "calls.log").read_text().count("--prune-backups keep-all=1") == 2
    # Not told keep-all, vzdump applies the storage's retention itself (the stand-in does, as VZDump.pm does)
    unguarded = standin(root, "vzdump", "101", "--compress", "zstd", "--storage", "local")
    assert unguarded.returncode == 0 and "prune older backups with retention: keep-last=1" in unguarded.stdout
    assert len(list(dump.glob("*.vma.zst"))) == 1


def test_a_container_is_restored_onto_a_storage_that_holds_container_directories(pve):
    root, _ = pve
    name = run_cli("create", "--target", "ct-200").envelope["result"]["targets"][0]["name"]
    # The fault model: pct restore without --storage means storage 'local' (pve-container API2/LXC.pm create_vm)
    bare = standin(root, "pct", "restore", "9005", f"local:backup/{name}")
    assert bare.returncode == 255 and "storage 'local' does not support container directories" in bare.stderr
    assert "9005" not in state(root)["vms"]

    config = yaml.safe_load((Path(os.environ["BAK_CONFIG"])).read_text())
    config["targets"][3]["vzdump"]["restore_storage"] = "local"
    write_config(Path(os.environ["BAK_CONFIG"]), config)
    wrong = run_cli("restore", "--target", "ct-200")
    assert wrong.code == 2 and wrong.envelope["errors"][0]["code"] == "storage_not_rootdir", wrong.envelope
    assert "local-lvm" in wrong.envelope["errors"][0]["message"]

    del config["targets"][3]["vzdump"]["restore_storage"]
    write_config(Path(os.environ["BAK_CONFIG"]), config)
    set_storages(root, **{"local-lvm": {**state(root)["storages"]["local-lvm"], "content": ["images"]},
                          "tank": {"type": "zfspool", "path": str(root / "tank"), "total_kib": 10**9,
                                   "content": ["images", "rootdir"]}})
    original_gone = run_cli("restore", "--target", "ct-200")
    assert original_gone.code == 3 and original_gone.envelope["errors"][0]["code"] == "storage_not_rootdir"
    assert "'local-lvm'" in original_gone.envelope["errors"][0]["message"] and "tank" in original_gone.envelope["errors"][0]["message"]
    assert "pct restore" not in (root / "calls.log").read_text().replace("pct restore 9005", "")

    set_storages(root, **{"local-lvm": {**state(root)["storages"]["local-lvm"], "content": ["images", "rootdir"]}})
    restored = run_cli("restore", "--target", "ct-200")
    assert restored.code == 0 and restored.envelope["result"]["storage"] == "local-lvm", restored.envelope
    assert state(root)["vms"][str(restored.envelope["result"]["vmid"])]["rootfs_storage"] == "local-lvm"


def test_a_pvesm_free_that_removed_nothing_is_a_failed_removal(pve):
    root, _ = pve
    names = []
    for _ in range(2):
        names.append(run_cli("create", "--target", "vm-101").envelope["result"]["targets"][0]["name"])
        time.sleep(1.1)
    dump = root / "storage-local" / "dump"
    set_storages(root)  # unchanged storages; the knob below makes the file system refuse the unlink
    current = state(root)
    current["unlink_fails"] = [names[0]]
    (root / "state.json").write_text(json.dumps(current))
    assert standin(root, "pvesm", "free", f"local:backup/{names[0]}").returncode == 0  # exits 0 all the same
    pruned = run_cli("prune", "--target", "vm-101")
    assert pruned.code == 1 and pruned.envelope["errors"][0]["code"] == "remove_failed", pruned.envelope
    assert "Permission denied" in pruned.envelope["errors"][0]["message"] and (dump / names[0]).exists()
    log = run_cli("log", "--kind", "prune").envelope["result"]
    rows = [r for r in log["operations"] if r["target"] == "vm-101"]
    assert rows and rows[0]["status"] == "failed" and "Permission denied" in rows[0]["error_tail"]

    from bak.config import load
    from bak.run import Hosts
    from bak.stores import open_store

    config = load(Path(os.environ["BAK_CONFIG"]))
    with Hosts(config) as hosts:
        store = open_store(config.destinations["pve-local"], hosts)
        (dump / f"{names[1]}.protected").write_text("")  # protected since bak listed it
        with pytest.raises(CommandFailed) as failed:
            store.remove("", names[1])
    assert failed.value.code == "protected_volume" and "--protected 0" in failed.value.hint
    assert (dump / names[1]).exists()


def test_vmids_are_free_across_the_cluster(pve):
    root, _ = pve
    current = state(root)
    current["other_nodes"] = {"9001": {"type": "qemu", "name": "elsewhere", "node": "pve2", "status": "running"}}
    (root / "state.json").write_text(json.dumps(current))
    assert run_cli("create", "--target", "vm-101").code == 0
    elsewhere = run_cli("restore", "--target", "vm-101", "--into", "9001", "--force")
    assert elsewhere.code == 3 and elsewhere.envelope["errors"][0]["code"] == "guest_elsewhere", elsewhere.envelope
    restored = run_cli("restore", "--target", "vm-101")
    assert restored.code == 0 and restored.envelope["result"]["vmid"] == 9002  # 9000 here, 9001 on pve2
    config = yaml.safe_load(Path(os.environ["BAK_CONFIG"]).read_text())
    del config["targets"][1]["vzdump"]["restore_vmid_range"]
    write_config(Path(os.environ["BAK_CONFIG"]), config)
    anywhere = run_cli("restore", "--target", "vm-101")
    assert anywhere.code == 0 and anywhere.envelope["result"]["vmid"] == 103  # pvesh get /cluster/nextid


def test_a_pbs_storage_is_refused_before_vzdump_runs(pve):
    root, _ = pve
    set_storages(root, pbs={"type": "pbs", "path": str(root / "pbs"), "total_kib": 10**6})
    config = yaml.safe_load(Path(os.environ["BAK_CONFIG"]).read_text())
    config["destinations"]["pve-pbs"] = {"kind": "proxmox", "host": "pve", "storage": "pbs", "node": "pve"}
    config["targets"][1]["destinations"] = ["pve-pbs"]
    config["targets"][1]["vzdump"]["storage"] = "pbs"
    write_config(Path(os.environ["BAK_CONFIG"]), config)
    refused = run_cli("create", "--target", "vm-101")
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "pbs_storage", refused.envelope
    assert "vzdump" not in (root / "calls.log").read_text()


def test_bz2_and_tgz_archives_are_proxmox_archives(pve):
    root, _ = pve
    name = run_cli("create", "--target", "ct-200").envelope["result"]["targets"][0]["name"]
    dump = root / "storage-local" / "dump"
    tar = decompress((dump / name).read_bytes())
    stamp = name.split("-", 3)[3].split(".")[0]
    older = f"vzdump-lxc-200-{int(stamp[:4]) - 1}{stamp[4:]}"
    (dump / f"{older}.tar.bz2").write_bytes(bz2.compress(tar))
    (dump / f"{older[:-1]}7.tgz").write_bytes(gzip.compress(tar))
    listed = run_cli("list", "--vmid", "200", "--destination", "pve-local").envelope["result"]
    assert {b["name"] for b in listed["backups"]} == {name, f"{older}.tar.bz2", f"{older[:-1]}7.tgz"}
    assert listed["foreign"] == []
    for ext in (".tar.bz2", ".tgz"):
        assert vzdump.host_test_argv(f"x{ext}", "/d/x")[0] == ("bzip2" if ext.endswith("bz2") else "gzip")
        reader = vzdump.Decompressed(f"x{ext}", io.BytesIO((dump / next(p.name for p in dump.iterdir()
                                                                          if p.name.endswith(ext))).read_bytes()))
        assert vzdump.check_archive(f"vzdump-lxc-200-x{ext}", reader, True)["configs"] == ["pct.conf"]


def test_vzdump_output_as_proxmox_prints_it():
    assert [vzdump.parse_format_size(t) for t in ("512KB", "1023MB", "2.50GB", "1.25TB", "2.50G", "")] == [
        512 << 10, 1023 << 20, round(2.5 * 2**30), round(1.25 * 2**40), None, None]
    merged = ("INFO: starting new backup job: vzdump 999 --mode snapshot\n"
              "ERROR: Backup of VM 999 failed - unable to find VM '999'\nINFO: Backup job finished with errors\njob errors\n")
    log = vzdump.parse_vzdump(merged)
    assert not log.ok and log.reason == "unable to find VM '999'" and "check vzdump.vmid (qm list)" in vzdump.hint_for(
        log.reason, 999)
    early = vzdump.parse_vzdump("cannot use options 'storage' and 'dumpdir' at the same time\n")
    assert not early.ok and early.reason == "cannot use options 'storage' and 'dumpdir' at the same time"
    pbs = vzdump.parse_vzdump("INFO: creating Proxmox Backup Server archive 'vm/100/2024-01-31T01:00:03Z'\n"
                              "INFO: Backup job finished successfully\n")
    assert not pbs.ok and "Proxmox Backup Server" in pbs.reason  # no archive file: never a crash


def test_a_zstd_copy_missing_its_last_bytes_fails():
    data = os.urandom(200_000) + bytes(300_000)
    whole = compress(data)
    assert read_all(vzdump.Decompressed("x.vma.zst", io.BytesIO(whole))) == data
    for cut in (1, 4, 5, len(whole) // 2):
        with pytest.raises(VerifyFailed, match="zstd: truncated archive"):
            read_all(vzdump.Decompressed("x.vma.zst", io.BytesIO(whole[:-cut])))


def read_all(stream):
    parts = []
    while chunk := stream.read(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


@settings(max_examples=60, deadline=None)
@given(frames=st.lists(st.tuples(st.binary(max_size=3000), st.booleans(), st.booleans(), st.integers(1, 19)),
                       min_size=1, max_size=4),
       skippable=st.binary(max_size=40), cut=st.integers(0, 20000))
def test_the_zstd_walk_knows_where_frames_end(frames, skippable, cut):
    """Frames with and without checksum or content size, a skippable frame, cut anywhere: the stream reads
    back whole exactly when the cut falls between frames."""
    pieces = [zstandard.ZstdCompressor(level=level, write_checksum=check, write_content_size=size).compress(data)
              for data, check, size, level in frames]
    pieces.insert(1, (0x184D2A53).to_bytes(4, "little") + len(skippable).to_bytes(4, "little") + skippable)
    whole = b"".join(pieces)
    bounds = {sum(len(p) for p in pieces[:i]) for i in range(1, len(pieces) + 1)}
    cut = min(cut, len(whole))
    expected = b"".join(data for data, *_ in frames)
    if cut in bounds or cut == len(whole):
        if cut == len(whole):
            assert read_all(vzdump.Decompressed("x.vma.zst", io.BytesIO(whole))) == expected
    else:
        with pytest.raises(VerifyFailed):
            read_all(vzdump.Decompressed("x.vma.zst", io.BytesIO(whole[:cut])))


def test_lzo_is_refused_in_the_config(bak_home):
    write_config(bak_home / "config.yaml", {"version": 1, "hosts": {"pve": {"address": "127.0.0.1"}},
                                            "destinations": {"p": {"kind": "proxmox", "host": "pve", "storage": "local"}},
                                            "targets": [{"name": "vm-100", "method": "vzdump", "host": "pve",
                                                         "destinations": ["p"],
                                                         "vzdump": {"vmid": 100, "storage": "local", "compress": "lzo"}}]})
    checked = run_cli("config", "check")
    assert checked.code == 2 and checked.envelope["errors"][0]["where"] == "targets[0].vzdump.compress"
