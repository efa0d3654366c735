"""A target's backups on a store: artifacts with their sidecars, leftover partials, foreign files.

Targets never meet: each target writes into its own folder under the seed's kind folder
(`postgresql/pg-app/pg-app-2026-...dump`), so two targets dumping databases of the same name,
or named `big` and `big-2`, cannot see, prune or clean up each other's files. Backups written
by older versions straight into the kind folder (`postgresql/pg-app-...dump`) still count for
the one target that can own their name; when two targets could, they are left alone as foreign.
Proxmox storage has one flat dump folder that vzdump owns: there a target's files are its VMID's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bak import naming
from bak.config import Target
from bak.errors import BakError
from bak.stores import FOLDERS, Store
from bak.stores.base import Entry

_VZDUMP_LOG = re.compile(r"^(vzdump-(?:qemu|lxc)-\d+-\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2})\.log$")

# Backups dated further ahead than this are a clock problem, never "the newest": one hour of a
# daylight-saving change (names carry local time) plus clock drift between hosts.
FUTURE_TOLERANCE = timedelta(hours=2)


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
    """Where the target writes: its own folder inside the seed's kind folder."""
    return f"{FOLDERS[target.method]}/{target.name}"


def shared_folder_of(target: Target) -> str:
    """The seed's kind folder, where older versions wrote every target's files side by side."""
    return FOLDERS[target.method]


def safety_folder_of(target: Target) -> str:
    """Safety copies taken before a forced restore: apart from backups, never picked, never pruned by policy."""
    return f"{naming.SAFETY_FOLDER}/{target.name}"


@dataclass(slots=True)
class Backup:
    target: str
    store: str
    folder: str
    name: str
    when: datetime
    entry: Entry
    sidecars: list[str] = field(default_factory=list)
    reader: Store | None = None          # where a snapshot folder's manifest is read from, for its sizes
    _sizes: tuple[int, int | None] | None = None

    @property
    def size(self) -> int:
        """The bytes a restore gives back: a file's length, a snapshot folder's files (not its folder entry)."""
        return self._snapshot_sizes()[0] if self.entry.is_dir else self.entry.size

    @property
    def added(self) -> int | None:
        """Bytes this backup added on its destination: a hard-linked snapshot shares the rest with the one before."""
        return self._snapshot_sizes()[1] if self.entry.is_dir else self.entry.size

    def _snapshot_sizes(self) -> tuple[int, int | None]:
        if self._sizes is None:
            self._sizes = snapshot_sizes(self.reader, self.folder, self.name)
        return self._sizes

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

    def in_future(self, now: datetime) -> bool:
        return self.when - now > FUTURE_TOLERANCE


@dataclass(slots=True)
class Leftover:
    """A `.partial` left by an interrupted run, or a sidecar whose artifact never got its final name."""

    folder: str
    entry: Entry

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def mtime(self) -> float:
        return self.entry.mtime


@dataclass
class Listing:
    store: str
    folder: str                    # where the target writes
    backups: list[Backup]          # newest first
    partials: list[Leftover]
    foreign: list[str]             # paths relative to the store root
    incomplete: list[Backup] = field(default_factory=list)  # named like backups, without their checksum sidecar

    def newest_good(self, now: datetime) -> Backup | None:
        return next((b for b in self.backups if not b.in_future(now)), None)


@dataclass
class FolderIndex:
    """One folder of one store, parsed once and shared by every target that reads it."""

    store: str
    folder: str
    backups: dict[tuple[str, str], list[Backup]]
    partials: dict[tuple[str, str], list[Leftover]]
    foreign: list[str]
    folders: set[str] = field(default_factory=set)  # names of sub-folders (not symlinks)

    def of_kind(self, kind: str) -> tuple[list[Backup], list[Leftover]]:
        backups = [b for (k, _), items in self.backups.items() if k == kind for b in items]
        partials = [p for (k, _), items in self.partials.items() if k == kind for p in items]
        return backups, partials

    def of_key(self, kind: str, key: str) -> tuple[list[Backup], list[Leftover]]:
        return list(self.backups.get((kind, key), [])), list(self.partials.get((kind, key), []))


def index_folder(store_name: str, folder: str, entries: list[Entry]) -> FolderIndex:
    """Each name is parsed once: artifacts, then their sidecars, partials and foreign names."""
    sidecar = naming.SIDECAR_SUFFIXES
    links = sorted(e.name for e in entries if e.is_link)  # never followed: foreign, whatever their names
    entries = [e for e in entries if not e.is_link]
    parsed_by_name = {e.name: None if e.name.endswith(sidecar) else naming.parse(e.name) for e in entries}
    by_name = {e.name: e for e in entries}
    backups: dict[str, tuple[tuple[str, str], Backup]] = {}
    for entry in entries:
        parsed = parsed_by_name[entry.name]
        if parsed:
            when = parsed.when if parsed.timed else _recorded_time(entry.name, parsed.when, by_name)
            backups[entry.name] = ((parsed.kind, parsed.key), Backup("", store_name, folder, entry.name, when, entry))
    partials: dict[tuple[str, str], list[Leftover]] = {}
    foreign: list[str] = []
    for entry in entries:
        if parsed_by_name[entry.name]:
            continue
        owner = _owner(entry.name, backups)
        if owner:
            backups[owner][1].sidecars.append(entry.name)
            continue
        # A partial artifact, or a sidecar (final or partial) whose artifact has no final name:
        # what a run leaves when it is killed before its last rename.
        stem = entry.name[: -len(naming.PARTIAL_SUFFIX)] if entry.name.endswith(naming.PARTIAL_SUFFIX) else entry.name
        split = naming.split_sidecar(stem)
        of = naming.parse(split[0] if split else stem)
        if of and (split or stem != entry.name):
            partials.setdefault((of.kind, of.key), []).append(Leftover(folder, entry))
            continue
        foreign.append(entry.name)
    grouped: dict[tuple[str, str], list[Backup]] = {}
    for key, backup in backups.values():
        grouped.setdefault(key, []).append(backup)
    for items in grouped.values():
        items.sort(key=lambda b: (b.when, b.name), reverse=True)
    return FolderIndex(store_name, folder, grouped, partials, sorted(foreign + links),
                       {e.name for e in entries if e.is_dir})


def _recorded_time(name: str, day: datetime, by_name: dict[str, Entry]) -> datetime:
    """A daily name (`rsync-T-2026-12-01`) carries no time: bak sets its checksum sidecar's mtime to
    the real creation time. A sidecar dated another day (copied without its times) is not trusted."""
    for suffix in (naming.MANIFEST_SUFFIX, ".sha256"):
        sidecar = by_name.get(name + suffix)
        if sidecar is not None:
            try:
                recorded = datetime.fromtimestamp(sidecar.mtime)
            except (OSError, OverflowError, ValueError):
                return day
            return recorded.replace(microsecond=0) if recorded.date() == day.date() else day
    return day


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


def folders_to_read(target: Target, store: Store) -> list[str]:
    """The target's own folder, and the shared kind folder (older versions' flat names)."""
    if not store.per_target_folders:
        return [shared_folder_of(target)]
    return [folder_of(target), shared_folder_of(target)]


def listing_from(target: Target, store: Store, indexes: dict[str, FolderIndex]) -> Listing:
    """One target's view of the folders `folders_to_read` names, already indexed."""
    kind, key = kind_of(target), target_key(target)
    backups: list[Backup] = []
    partials: list[Leftover] = []
    foreign: list[str] = []
    incomplete: list[Backup] = []
    for folder in folders_to_read(target, store):
        index = indexes.get(folder)
        if index is None:
            continue
        own = store.per_target_folders and folder == folder_of(target)
        found, leftovers = index.of_kind(kind) if own else index.of_key(kind, key)
        found, lacking = complete(store, found)
        foreign += [f"{folder}/{n}" for b in lacking for n in (b.name, *b.sidecars)]
        if own or target.owns_flat_names or not store.per_target_folders:
            backups += found
            partials += leftovers
            incomplete += lacking
        else:  # flat names another target makes too: whose they are cannot be told, so nobody touches them
            foreign += [f"{folder}/{n}" for b in found for n in (b.name, *b.sidecars)] + \
                [f"{folder}/{p.name}" for p in leftovers]
        # In a shared kind folder, folders that are not backups are the targets' own folders.
        foreign += [f"{folder}/{name}" for name in index.foreign if own or name not in index.folders]
    for backup in backups + incomplete:
        backup.target, backup.reader = target.name, store
    backups.sort(key=lambda b: (b.when, b.name), reverse=True)
    return Listing(store.name, folder_of(target), backups, partials, foreign, incomplete)


def complete(store: Store, found: list[Backup]) -> tuple[list[Backup], list[Backup]]:
    """(backups, the rest): a name bak did not finish writing, or that someone dropped there (an 8-byte
    "dump" with no .sha256), is never a backup, never the newest, never restored: it is foreign."""
    if not store.checksummed:
        return found, []
    return [b for b in found if b.has_checksum], [b for b in found if not b.has_checksum]


def snapshot_sizes(store: Store | None, folder: str, name: str) -> tuple[int, int | None]:
    """(size, added) from a snapshot's manifest: its header line, or (bak 0.1) the sum of its rows."""
    if store is None:
        return 0, None
    from bak import manifest

    try:
        head = store.read_small(folder, name + naming.MANIFEST_SUFFIX, 4096).split(b"\n", 1)[0]
        first = manifest.loads(head)
        if first.version >= 2 and "size" in first.head:
            return int(first.head["size"]), first.head.get("added")
        whole = manifest.loads(store.read_small(folder, name + naming.MANIFEST_SUFFIX, 1 << 34))
        return sum(int(r.get("size") or 0) for r in whole.files().values()), None
    except (OSError, ValueError, TypeError, BakError):
        return 0, None


def scan(store: Store, target: Target) -> Listing:
    """One target's view of one store."""
    indexes = {folder: index_folder(store.name, folder, store.list(folder)) for folder in folders_to_read(target, store)}
    return listing_from(target, store, indexes)


def safety_copies(store: Store, target: Target) -> list[Backup]:
    """What forced restores of this target saved on a store before replacing anything, newest first."""
    if not store.per_target_folders:
        return []
    folder = safety_folder_of(target)
    index = index_folder(store.name, folder, store.list(folder))
    copies, _ = complete(store, [b for items in index.backups.values() for b in items])
    for copy in copies:
        copy.target, copy.reader = target.name, store
    return sorted(copies, key=lambda b: (b.when, b.name), reverse=True)
