"""A target's backups on a store: artifacts with their sidecars, leftover partials, foreign files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from bak import naming
from bak.config import Target
from bak.stores import FOLDERS, Store
from bak.stores.base import Entry

_VZDUMP_LOG = re.compile(r"^(vzdump-(?:qemu|lxc)-\d+-\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2})\.log$")


def target_key(target: Target) -> str:
    """The part of a file name that says which target it belongs to."""
    options = target.options
    if target.method == "vzdump":
        return str(options["vmid"])
    if target.method == "pg_dump":
        return options["database"]
    if target.method == "docker_volume":
        return f"{options['container']}-{options['volume']}"
    return target.name


def kind_of(target: Target) -> str:
    return {"vault": "rsync", "config": "rsync"}.get(target.method, target.method)


def folder_of(target: Target) -> str:
    return FOLDERS[target.method]


@dataclass
class Backup:
    target: str
    store: str
    folder: str
    name: str
    when: datetime
    size: int
    is_dir: bool
    sidecars: list[str] = field(default_factory=list)

    @property
    def protected(self) -> bool:
        return self.name + ".protected" in self.sidecars

    @property
    def has_checksum(self) -> bool:
        return self.name + ".sha256" in self.sidecars


@dataclass
class Listing:
    store: str
    folder: str
    backups: list[Backup]          # newest first
    partials: list[Entry]
    foreign: list[str]


def scan(store: Store, target: Target, entries: list[Entry] | None = None) -> Listing:
    """One target's view of one store's folder (pass `entries` to reuse a listing)."""
    folder = folder_of(target)
    entries = store.list(folder) if entries is None else entries
    kind, key = kind_of(target), target_key(target)
    names = {e.name for e in entries}
    backups: dict[str, Backup] = {}
    partials: list[Entry] = []
    foreign: list[str] = []
    for entry in entries:
        parsed = naming.parse(entry.name)
        if parsed:
            if parsed.kind == kind and parsed.key == key:
                backups[entry.name] = Backup(target.name, store.name, folder, entry.name, parsed.when, entry.size, entry.is_dir)
            continue
        if entry.name.endswith(naming.PARTIAL_SUFFIX):
            owner = naming.parse(_strip_partial(entry.name))
            if owner and owner.kind == kind and owner.key == key:
                partials.append(entry)
            elif not owner and not _sidecar_owner(_strip_partial(entry.name), names):
                foreign.append(entry.name)
            continue
        if not _sidecar_owner(entry.name, names):
            foreign.append(entry.name)
    for entry in entries:
        owner = _sidecar_owner(entry.name, names)
        if owner in backups:
            backups[owner].sidecars.append(entry.name)
    ordered = sorted(backups.values(), key=lambda b: (b.when, b.name), reverse=True)
    return Listing(store.name, folder, ordered, partials, sorted(foreign))


def _strip_partial(name: str) -> str:
    return name[: -len(naming.PARTIAL_SUFFIX)]


def _sidecar_owner(name: str, names: set[str]) -> str | None:
    """The artifact a sidecar belongs to (`x.dump.sha256` -> `x.dump`), if that artifact exists."""
    split = naming.split_sidecar(name)
    if split and naming.parse(split[0]):
        return split[0]
    match = _VZDUMP_LOG.match(name)
    if match:
        return next((n for n in names if n.startswith(match.group(1) + ".") and naming.parse(n)), None)
    return None
