"""The store interface and the atomic artifact writer contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterable

from bak.errors import BadInput, NoSpace, Refused
from bak.naming import PARTIAL_SUFFIX


class Entry:
    """A name in a store folder. Size and mtime are read on first use: a status over 50,000
    backups needs them for a hundred files, not for all of them."""

    __slots__ = ("name", "is_dir", "is_link", "_size", "_mtime", "_stat")

    def __init__(self, name: str, size: int | None, mtime: float | None, is_dir: bool, dir_entry=None,
                 is_link: bool = False):
        self.name, self.is_dir, self.is_link = name, is_dir, is_link
        self._size, self._mtime, self._stat = size, mtime, dir_entry

    def _load(self) -> None:
        st = self._stat.stat(follow_symlinks=False)
        self._size, self._mtime, self._stat = st.st_size, st.st_mtime, None

    @property
    def size(self) -> int:
        if self._size is None:
            self._load()
        return self._size

    @property
    def mtime(self) -> float:
        if self._mtime is None:
            self._load()
        return self._mtime

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, dir={self.is_dir})"


@dataclass(frozen=True)
class Usage:
    total: int
    free: int

    @property
    def used_percent(self) -> float:
        return 100.0 * (self.total - self.free) / self.total if self.total else 0.0


def chunks_of(data: bytes | Iterable[bytes]) -> Iterable[bytes]:
    return (data,) if isinstance(data, (bytes, bytearray)) else data


def sha256_line(digest: str, name: str) -> bytes:
    """One line in `sha256sum -c` format, so a human can check a copy with coreutils."""
    return f"{digest}  {name}\n".encode()


class ArtifactWriter:
    """Bytes of one artifact on one store. write() streams into NAME.partial; commit() fsyncs, writes
    the NAME.sha256 sidecar, then renames the partial to NAME: a final name never lacks its sidecar.
    abort() removes the partial (and a sidecar already written)."""

    name: str
    location: str
    size: int = 0

    def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def commit(self, sha256: str, sidecars: dict[str, bytes] | None = None) -> None:
        """`sidecars` (name -> bytes, e.g. `NAME.meta.json`) are written before the .sha256 and the rename."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


def not_a_folder(store: str, path: str) -> "BadInput":
    return BadInput(f"destination {store}: {path} is not a folder, so no backup can be written there", where=store,
                    code="destination_not_a_folder", hint=f"Point destinations.{store}.path at a folder (or a new path).")


def symlink_refused(store: str, path: str) -> "Refused":
    return Refused(f"{path} on {store} is a symbolic link: bak never follows links inside a store", where=store,
                   code="symlink_in_store", hint="Replace the link with a real folder (or point the destination's path there).")


class Store:
    name: str
    kind: str
    host_name: str  # "local", or the SSH host the folder lives on
    per_target_folders = True  # False where a tool owns one flat folder (Proxmox storage)
    # An artifact is complete, so a backup, only with its checksum sidecar (.sha256, or a snapshot's .manifest),
    # which bak writes before the final name; False where the tool that writes it says so itself (vzdump).
    checksummed = True

    def path_of(self, folder: str, name: str = "") -> str:
        """The path on the store's own host, for tools (rsync, tar) that run there or reach it."""
        raise NotImplementedError

    def rename(self, folder: str, old: str, new: str) -> None:
        """Atomic rename inside one folder (how a finished snapshot gets its final name)."""
        raise NotImplementedError

    def location(self, folder: str, name: str = "") -> str:
        raise NotImplementedError

    def list(self, folder: str) -> list[Entry]:
        """Entries of one folder under the root; an absent folder is empty."""
        raise NotImplementedError

    def writer(self, folder: str, name: str) -> ArtifactWriter:
        raise NotImplementedError

    def make_folder(self, folder: str) -> None:
        """The folder (and missing parents), private to its owner, for a tool (rsync) that writes into it."""
        raise NotImplementedError

    def write_small(self, folder: str, name: str, data: bytes | Iterable[bytes], mtime: float | None = None) -> None:
        """A sidecar, written atomically (partial, fsync, rename): bytes, or chunks streamed (a manifest of
        500,000 rows is never one string); `mtime` records a time beside a name that carries none (see catalog)."""
        raise NotImplementedError

    def read_small(self, folder: str, name: str, limit: int = 1 << 20) -> bytes:
        raise NotImplementedError

    def open_read(self, folder: str, name: str) -> BinaryIO:
        raise NotImplementedError

    def remove(self, folder: str, name: str) -> None:
        """A file, or a whole snapshot folder."""
        raise NotImplementedError

    # A store that can rename removes a backup under a leftover's name (see remove_backup).
    renames_aside = False

    def remove_backup(self, folder: str, name: str, sidecars: list[str]) -> None:
        """A backup and its sidecars (prune). Where the store can rename, the backup is first renamed to
        NAME.partial: deleting a snapshot of 100,000 files takes a while, and a prune killed meanwhile must
        leave a leftover (listed as such, cleared by the next run), never half a backup under its name."""
        if self.renames_aside:
            self.rename(folder, name, name + PARTIAL_SUFFIX)
        for sidecar in sidecars:
            self.remove(folder, sidecar)
        self.remove(folder, name + PARTIAL_SUFFIX if self.renames_aside else name)

    def usage(self) -> Usage:
        raise NotImplementedError

    def exists(self) -> bool:
        """Whether the destination's own folder is there (a missing one: an NFS share not mounted?)."""
        return True

    def check_usable(self) -> None:
        """What a dry run can tell without writing anything: the destination can take a backup (its folder is
        one, or can be made; its repository answers)."""

    def require_space(self, needed: int) -> None:
        free = self.usage().free
        if free < needed:
            raise NoSpace(f"destination {self.name} has {free} bytes free, this backup needs about {needed}",
                          where=self.name, hint="Prune old backups (bak prune --dry-run) or free space first.")

    def refuse_existing(self, folder: str, name: str) -> None:
        """Two runs in the same second would share a name: the second must never replace the first."""
        if any(entry.name == name for entry in self.list(folder)):
            raise Refused(f"{name} already exists on {self.name}; a backup is never overwritten", where=self.name,
                          code="name_taken", hint="Wait a second and run again.")
