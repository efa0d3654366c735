"""The seed's backup file names, formatted and parsed in one place.

A name that does not parse is foreign: it is listed as such and never pruned.
Times in names are the local wall-clock time of the machine that made the backup,
so they are naive datetimes here, as in Proxmox.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import NamedTuple

MANIFEST_SUFFIX = ".manifest"
SIDECAR_SUFFIXES = (".sha256", ".meta.json", ".protected", ".notes", ".globals.sql", MANIFEST_SUFFIX)
PARTIAL_SUFFIX = ".partial"
# The seed's destination tree: one folder per kind of backup (each target writes in a subfolder).
FOLDERS = {"vzdump": "proxmox", "pg_dump": "postgresql", "rsync": "rsync", "vault": "rsync",
           "config": "config", "docker_volume": "docker-volumes"}
# Safety copies taken before a forced restore live under this folder of a store, apart from backups.
SAFETY_FOLDER = "safety"

# One path component that cannot climb, hide, expand or split a shell word.
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SAFE = re.compile(SAFE_NAME)

# Timestamps are read from named groups with int(): strptime cost 15 us a name, too slow for
# a 50,000-backup catalogue.
_DATE = r"(?P<Y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})"
_PATTERNS = {
    "vzdump": re.compile(
        r"^vzdump-(?P<guest>qemu|lxc)-(?P<key>[1-9][0-9]{2,8})-"
        r"(?P<Y>\d{4})_(?P<m>\d{2})_(?P<d>\d{2})-(?P<H>\d{2})_(?P<M>\d{2})_(?P<S>\d{2})"
        # pve-storage Storage.pm $BACKUP_EXT_RE_2: .tgz, or .vma/.tar with .gz, .lzo, .zst or .bz2
        r"(?P<ext>\.(?:tgz|(?:vma|tar)(?:\.zst|\.lzo|\.gz|\.bz2)?))$"),
    "pg_dump": re.compile(
        r"^pg-(?P<key>[A-Za-z0-9_.-]+?)-" + _DATE + r"_(?P<H>\d{2})(?P<M>\d{2})(?P<S>\d{2})(?P<ext>\.dump|\.sql\.gz)$"),
    "rsync": re.compile(
        r"^rsync-(?P<key>[A-Za-z0-9_.-]+?)-" + _DATE + r"(?:_(?P<H>\d{2})(?P<M>\d{2})(?P<S>\d{2}))?(?P<ext>)$"),
    "docker_volume": re.compile(
        r"^docker-vol-(?P<key>[A-Za-z0-9_.-]+?)-" + _DATE + r"(?:_(?P<H>\d{2})(?P<M>\d{2})(?P<S>\d{2}))?(?P<ext>\.tar\.gz)$"),
}


class ParsedName(NamedTuple):
    kind: str          # vzdump | pg_dump | rsync | docker_volume
    key: str           # what identifies the source: vmid, db name, rsync source, "container-volume"
    when: datetime     # local time from the name
    ext: str           # ".vma.zst", ".dump", ".sql.gz", "" (rsync folder), ".tar.gz"
    guest: str | None = None  # qemu | lxc for vzdump
    timed: bool = True  # False for the seed's daily names, which carry no time of day


def is_safe_name(name: str) -> bool:
    return bool(_SAFE.fullmatch(name))


def parse(name: str) -> ParsedName | None:
    kind = _KIND_BY_PREFIX.get(name[:3])
    if kind is None or name.endswith(SIDECAR_SUFFIXES):
        return None
    match = _PATTERNS[kind].fullmatch(name)
    if match:
        group = match.group
        try:
            when = datetime(int(group("Y")), int(group("m")), int(group("d")),
                            int(group("H") or 0), int(group("M") or 0), int(group("S") or 0))
        except ValueError:
            return None  # 2026-02-30 and the like: not one of ours
        return ParsedName(kind, group("key"), when, group("ext"), group("guest") if kind == "vzdump" else None,
                          group("H") is not None)
    return None


_KIND_BY_PREFIX = {"vzd": "vzdump", "pg-": "pg_dump", "rsy": "rsync", "doc": "docker_volume"}


def vzdump_name(vmid: int, when: datetime, guest: str = "qemu", ext: str = ".vma.zst") -> str:
    return f"vzdump-{guest}-{vmid}-{when:%Y_%m_%d-%H_%M_%S}{ext}"


def pg_dump_name(database: str, when: datetime, fmt: str = "custom") -> str:
    ext = ".dump" if fmt == "custom" else ".sql.gz"
    return f"pg-{database}-{when:%Y-%m-%d_%H%M%S}{ext}"


def rsync_name(source: str, when: datetime, with_time: bool = False) -> str:
    """The seed's daily name; a second snapshot the same day adds _HHMMSS."""
    stamp = f"{when:%Y-%m-%d_%H%M%S}" if with_time else f"{when:%Y-%m-%d}"
    return f"rsync-{source}-{stamp}"


def docker_volume_name(container: str, volume: str, when: datetime, with_time: bool = False) -> str:
    stamp = f"{when:%Y-%m-%d_%H%M%S}" if with_time else f"{when:%Y-%m-%d}"
    return f"docker-vol-{container}-{volume}-{stamp}.tar.gz"


_SIDECAR = re.compile(r"^(.+)(" + "|".join(re.escape(s) for s in SIDECAR_SUFFIXES) + r")$")


def split_sidecar(name: str) -> tuple[str, str] | None:
    """`x.dump.sha256` -> (`x.dump`, `.sha256`); None when `name` is not a sidecar."""
    match = _SIDECAR.match(name)
    return (match.group(1), match.group(2)) if match else None
