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


@dataclass(slots=True)
class Backup:
    target: str
    store: str
    folder: str
    name: str
    when: datetime
    entry: Entry
    sidecars: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.entry.size

    @property
    def is_dir(self) -> bool:
        return self.entry.is_dir

    @property
    def protected(self) -> bool:
        return self.name + ".protected" in self.sidecars

    @property
    def has_checksum(self) -> bool:
        """A file has its .sha256; a snapshot folder its per-file .manifest."""
        return self.name + ".sha256" in self.sidecars or self.name + ".manifest" in self.sidecars


@dataclass
class Listing:
    store: str
    folder: str
    backups: list[Backup]          # newest first
    partials: list[Entry]
    foreign: list[str]


@dataclass
class FolderIndex:
    """One folder of one store, parsed once and shared by every target that writes there."""

    store: str
    folder: str
    backups: dict[tuple[str, str], list[Backup]]
    partials: dict[tuple[str, str], list[Entry]]
    foreign: list[str]

    def listing_for(self, target: Target) -> Listing:
        key = (kind_of(target), target_key(target))
        backups = self.backups.get(key, [])
        for backup in backups:
            backup.target = target.name
        return Listing(self.store, self.folder, list(backups), list(self.partials.get(key, [])), self.foreign)


def index_folder(store_name: str, folder: str, entries: list[Entry]) -> FolderIndex:
    """Each name is parsed once: artifacts, then their sidecars, partials and foreign names."""
    sidecar = naming.SIDECAR_SUFFIXES
    parsed_by_name = {e.name: None if e.name.endswith(sidecar) else naming.parse(e.name) for e in entries}
    backups: dict[str, tuple[tuple[str, str], Backup]] = {}
    for entry in entries:
        parsed = parsed_by_name[entry.name]
        if parsed:
            backups[entry.name] = ((parsed.kind, parsed.key),
                                   Backup("", store_name, folder, entry.name, parsed.when, entry))
    partials: dict[tuple[str, str], list[Entry]] = {}
    foreign: list[str] = []
    for entry in entries:
        if parsed_by_name[entry.name]:
            continue
        owner = _owner(entry.name, backups)
        if owner:
            backups[owner][1].sidecars.append(entry.name)
            continue
        if entry.name.endswith(naming.PARTIAL_SUFFIX):
            stripped = entry.name[: -len(naming.PARTIAL_SUFFIX)]
            of = naming.parse(stripped)
            if of:
                partials.setdefault((of.kind, of.key), []).append(entry)
                continue
            if _owner(stripped, backups):
                continue  # a sidecar being written
        elif naming.split_sidecar(entry.name) and naming.parse(naming.split_sidecar(entry.name)[0]):
            continue  # a sidecar whose artifact is gone: bak's own, not foreign
        foreign.append(entry.name)
    grouped: dict[tuple[str, str], list[Backup]] = {}
    for key, backup in backups.values():
        grouped.setdefault(key, []).append(backup)
    for items in grouped.values():
        items.sort(key=lambda b: (b.when, b.name), reverse=True)
    return FolderIndex(store_name, folder, grouped, partials, sorted(foreign))


def _owner(name: str, backups: dict) -> str | None:
    """The artifact a sidecar belongs to (`x.dump.sha256` -> `x.dump`; vzdump's `x.log` -> `x.vma.zst`)."""
    split = naming.split_sidecar(name)
    if split and split[0] in backups:
        return split[0]
    match = _VZDUMP_LOG.match(name)
    if match:
        stem = match.group(1) + "."
        return next((n for n in backups if n.startswith(stem)), None)
    return None


def scan(store: Store, target: Target, entries: list[Entry] | None = None) -> Listing:
    """One target's view of one store's folder."""
    folder = folder_of(target)
    entries = store.list(folder) if entries is None else entries
    return index_folder(store.name, folder, entries).listing_for(target)
