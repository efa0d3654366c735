"""The seed's backup file names, formatted and parsed in one place.

A name that does not parse is foreign: it is listed as such and never pruned.
Times in names are the local wall-clock time of the machine that made the backup,
so they are naive datetimes here, as in Proxmox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

SIDECAR_SUFFIXES = (".sha256", ".meta.json", ".protected", ".notes", ".globals.sql")
PARTIAL_SUFFIX = ".partial"

# One path component that cannot climb, hide, expand or split a shell word.
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SAFE = re.compile(SAFE_NAME)

_PATTERNS = {
    "vzdump": re.compile(
        r"^vzdump-(?P<guest>qemu|lxc)-(?P<key>[1-9][0-9]{2,8})-"
        r"(?P<ts>\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2})"
        r"(?P<ext>\.(?:vma|tar)(?:\.zst|\.lzo|\.gz)?)$"),
    "pg_dump": re.compile(
        r"^pg-(?P<key>[A-Za-z0-9_.-]+?)-(?P<ts>\d{4}-\d{2}-\d{2}_\d{6})(?P<ext>\.dump|\.sql\.gz)$"),
    "rsync": re.compile(
        r"^rsync-(?P<key>[A-Za-z0-9_.-]+?)-(?P<ts>\d{4}-\d{2}-\d{2}(?:_\d{6})?)(?P<ext>)$"),
    "docker_volume": re.compile(
        r"^docker-vol-(?P<key>[A-Za-z0-9_.-]+?)-(?P<ts>\d{4}-\d{2}-\d{2}(?:_\d{6})?)(?P<ext>\.tar\.gz)$"),
}

_TS_FORMATS = {
    "vzdump": ["%Y_%m_%d-%H_%M_%S"],
    "pg_dump": ["%Y-%m-%d_%H%M%S"],
    "rsync": ["%Y-%m-%d_%H%M%S", "%Y-%m-%d"],
    "docker_volume": ["%Y-%m-%d_%H%M%S", "%Y-%m-%d"],
}


@dataclass(frozen=True)
class ParsedName:
    kind: str          # vzdump | pg_dump | rsync | docker_volume
    key: str           # what identifies the source: vmid, db name, rsync source, "container-volume"
    when: datetime     # local time from the name
    ext: str           # ".vma.zst", ".dump", ".sql.gz", "" (rsync folder), ".tar.gz"
    guest: str | None = None  # qemu | lxc for vzdump


def is_safe_name(name: str) -> bool:
    return bool(_SAFE.match(name))


def parse(name: str) -> ParsedName | None:
    for kind, pattern in _PATTERNS.items():
        match = pattern.match(name)
        if not match:
            continue
        when = _parse_time(kind, match["ts"])
        if when is None:
            return None
        return ParsedName(kind, match["key"], when, match["ext"], match.groupdict().get("guest"))
    return None


def _parse_time(kind: str, text: str) -> datetime | None:
    for fmt in _TS_FORMATS[kind]:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


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


def split_sidecar(name: str) -> tuple[str, str] | None:
    """`x.dump.sha256` -> (`x.dump`, `.sha256`); None when `name` is not a sidecar."""
    for suffix in SIDECAR_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None
