"""3-2-1 from facts: which destinations share a medium, and which copies are really off-site.

Two destinations on one filesystem are one medium, however the config labels them: the same
st_dev on this machine (a local folder on an NFS or SMB mount belongs to the server), the same
host and st_dev over SSH. A copy is off-site only on another host than the data's and than this
machine. The config's `offsite: true` stays the operator's claim (facts cannot see rooms): it
counts unless the facts contradict it, and then the contradiction is reported.

Hosts are known by address, and `local` is this machine. An SSH host on a loopback address is
taken at its word as another machine: the tests stand remote hosts up that way.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from bak.config import LOCAL, Config, Destination, Target
from bak.errors import BakError

THIS_MACHINE = "this machine"
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "ceph", "glusterfs")


@dataclass(frozen=True)
class Medium:
    host: str  # the machine holding the bytes: THIS_MACHINE or an address
    key: str  # equal keys: the same medium
    label: str  # for humans
    measured: bool = True


def host_of(config: Config, host_name: str) -> str:
    return THIS_MACHINE if host_name == LOCAL else config.hosts[host_name].address.lower()


def medium_of(config: Config, dest: Destination, hosts=None) -> Medium:
    """The medium a destination writes to; remote facts need `hosts` (one runner per host)."""
    host = host_of(config, dest.host)
    unmeasured = Medium(host, f"{host}|destination {dest.name}", f"{dest.name} on {host} (not measured)", False)
    if dest.kind == "proxmox":
        return Medium(host, f"{host}|storage {dest.storage}", f"Proxmox storage {dest.storage} on {host}")
    path = dest.repository if dest.kind == "restic" else dest.path
    if dest.kind == "restic" and path and ":" in path and not path.startswith(("/", "~")):
        return _restic_medium(config, dest, hosts)
    if not path:
        return unmeasured
    try:
        if dest.host == LOCAL:
            device = os.stat(_existing(Path(path).expanduser())).st_dev
            share = _network_share(device)
            if share:
                server = _server_of(share)
                return Medium(server, f"{server}|share {share}", f"network share {share}")
            return Medium(host, f"{host}|{device}", f"device {os.major(device)}:{os.minor(device)} on {host}")
        if hosts is None:
            return unmeasured
        device = _remote_device(hosts.runner(dest.host), path)
        return Medium(host, f"{host}|{device}", f"device {device} on {host}")
    except (OSError, BakError, ValueError):
        return unmeasured


def _restic_medium(config: Config, dest: Destination, hosts) -> Medium:
    """A remote restic repository lives on its server: the sftp host (its device measured like an ssh
    folder's), or the rest:/s3: server's address; two repositories on one such server are one medium."""
    from bak.stores import resticcmd

    backend = resticcmd.backend_of(dest.repository)
    if backend == "sftp":
        host = host_of(config, dest.host)
        path = resticcmd.sftp_parts(dest.repository)[1]
        if hosts is not None:
            try:
                device = _remote_device(hosts.runner(dest.host), path)
                return Medium(host, f"{host}|{device}", f"device {device} on {host}")
            except (BakError, ValueError):
                pass
        return Medium(host, f"{host}|destination {dest.name}", f"{dest.name} on {host} (not measured)", False)
    server = resticcmd.server_of(dest.repository) or dest.name
    return Medium(server, f"{server}|{backend}", f"restic {backend} server {server}")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _remote_device(runner, path: str) -> str:
    """st_dev of the nearest existing folder, asked over the host's one connection."""
    probe = path
    while True:
        out = runner.run(["stat", "-c", "%d", "--", probe], check=False)
        if out.returncode == 0 or probe in ("", "/"):
            break
        probe = posixpath.dirname(probe)
    value = out.stdout_text.strip()
    if out.returncode != 0 or not value.isdigit():
        raise ValueError(f"stat gave no device for {path}")
    return value


def _network_share(device: int) -> str | None:
    """The source of the network filesystem mounted with this device number (Linux), if it is one."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts, tail = fields.split(), rest.split()
        if len(parts) > 2 and parts[2] == wanted and len(tail) > 1 and tail[0] in NETWORK_FILESYSTEMS:
            return tail[1]
    return None


def _server_of(share: str) -> str:
    """server:/export, //server/share, user@server:path -> server."""
    if share.startswith("//"):
        return share[2:].split("/", 1)[0].lower()
    return share.split(":", 1)[0].rsplit("@", 1)[-1].lower()


def rule_321(config: Config, target: Target, holders: list[str], media: dict[str, Medium]) -> dict:
    """3-2-1 for copies on `holders` (the original counts as copy 1), with the offsite claims facts contradict."""
    source = host_of(config, target.host)
    groups: dict[str, Medium] = {}
    offsite, contradicted = [], []
    for name in holders:
        medium = media[name]
        groups.setdefault(medium.key, medium)
        if not config.destinations[name].offsite:
            continue
        if medium.host == THIS_MACHINE:
            contradicted.append(f"{name} is marked offsite but is on {THIS_MACHINE}, where bak runs")
        elif medium.host == source:
            contradicted.append(f"{name} is marked offsite but is on the same host as the data ({target.host})")
        else:
            offsite.append(name)
    copies = 1 + len(holders)
    gaps = [gap for gap, missing in (("3 copies", copies < 3), ("2 media", len(groups) < 2), ("1 offsite", not offsite))
            if missing]
    return {"media": sorted(m.label for m in groups.values()), "copies": copies, "media_count": len(groups),
            "offsite": len(offsite), "offsite_destinations": offsite, "gaps": gaps, "contradicted": contradicted}
