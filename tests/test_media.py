"""3-2-1 counts media and off-site copies from facts: filesystems and hosts, not the config's labels."""

import subprocess

import pytest

from bak import media
from conftest import mount_tmpfs, run_cli, write_config
from test_status import dump


@pytest.fixture
def mounts(tmp_path):
    """Small tmpfs mounts of the test's own, each a filesystem of its own (needs root)."""
    made = []

    def mount(name):
        made.append(mount_tmpfs(tmp_path / name, "4m"))
        return made[-1]

    yield mount
    for point in made:
        subprocess.run(["umount", "-l", str(point)], check=False)


def lab(bak_home, first, second, **extra):
    dests = {"first": {"kind": "local", "path": str(first), "medium": "ssd"},
             "second": {"kind": "local", "path": str(second), "medium": "usb", **extra}}
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": dests,
        "targets": [{"name": "app", "method": "pg_dump", "destinations": ["first", "second"], "interval": "6h",
                     "pg_dump": {"database": "app"}}]})
    for folder in (first, second):
        dump(folder / "postgresql", "app", 1)
    return run_cli("status").envelope["result"]["targets"][0]["copies"]


def test_two_folders_on_one_tmpfs_are_one_medium(bak_home, mounts):
    disk = mounts("disk")
    copies = lab(bak_home, disk / "backups", disk / "more-backups")
    assert copies["destinations"] == ["first", "second"] and copies["copies"] == 3
    assert copies["media_count"] == 1 and not copies["ok"]  # "ssd" and "usb" in the config: one filesystem
    assert len(copies["media"]) == 1 and copies["media"][0].endswith("on this machine")


def test_two_tmpfs_mounts_are_two_media(bak_home, mounts):
    copies = lab(bak_home, mounts("disk1") / "backups", mounts("disk2") / "backups")
    assert copies["media_count"] == 2 and len(set(copies["media"])) == 2


def test_an_offsite_claim_on_this_machine_is_not_counted_and_is_reported(bak_home, mounts):
    copies = lab(bak_home, mounts("disk1"), mounts("usb"), offsite=True)
    assert copies["media_count"] == 2 and copies["offsite"] == 0 and copies["offsite_destinations"] == []
    status = run_cli("status").envelope
    assert "3-2-1: second is marked offsite but is on this machine, where bak runs" in \
        status["result"]["targets"][0]["problems"]


def test_remote_folders_on_one_filesystem_are_one_medium_and_off_site_means_another_host(bak_home, sshd):
    known = sshd.trust(bak_home / "known_hosts")
    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": {"store": sshd.host_config(known)},
        "destinations": {"nfs": {"kind": "ssh", "host": "store", "path": str(bak_home / "nfs"), "offsite": True},
                         "store-disk": {"kind": "ssh", "host": "store", "path": str(bak_home / "disk")}},
        "targets": [{"name": "here", "method": "pg_dump", "destinations": ["nfs", "store-disk"], "interval": "6h",
                     "pg_dump": {"database": "here"}},
                    {"name": "there", "method": "pg_dump", "host": "store", "destinations": ["nfs", "store-disk"],
                     "interval": "6h", "pg_dump": {"database": "there"}}]})
    for folder in ("nfs", "disk"):
        for db in ("here", "there"):
            dump(bak_home / folder / "postgresql", db, 1)
    result = run_cli("status").envelope["result"]
    targets = {t["target"]: t for t in result["targets"]}
    # Both destinations are folders of one filesystem on the SSH host: `stat -c %d` says so.
    assert targets["here"]["copies"]["media_count"] == 1
    assert targets["here"]["copies"]["offsite_destinations"] == ["nfs"]  # the data is on this machine
    assert targets["there"]["copies"]["offsite"] == 0  # the data lives on the same host as the share
    assert "3-2-1: nfs is marked offsite but is on the same host as the data (store)" in targets["there"]["problems"]
    assert {d["on"] for d in result["destinations"]} == {targets["here"]["copies"]["media"][0]}


def test_a_network_mount_belongs_to_its_server():
    assert media._server_of("192.0.2.14:/mnt/nfs/backups") == "192.0.2.14"
    assert media._server_of("//NAS/backups") == "nas"
    assert media._server_of("backup@store.lan:/srv") == "store.lan"
