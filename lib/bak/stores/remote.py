"""A folder on an SSH host: bytes over SFTP on the host's one connection, atomic on the remote side."""

from __future__ import annotations

import posixpath
import stat
from typing import BinaryIO, Iterable

from bak.errors import CommandFailed, TransportError, WriteFailed
from bak.naming import PARTIAL_SUFFIX
from bak.stores.base import (ArtifactWriter, Entry, Store, Usage, chunks_of, not_a_folder, sha256_line,
                             symlink_refused)


def _write_error(exc: Exception, store: str, location: str) -> WriteFailed:
    text = str(exc)
    if "No space" in text or "Failure" in text or getattr(exc, "errno", None) == 28:
        return WriteFailed(f"writing {location} on {store} failed (destination full?): {text}", where=store, code="disk_full",
                           hint="Check free space on the destination (df -h), prune or add space, then run again.")
    return WriteFailed(f"writing {location} on {store} failed: {text}", where=store)


class RemoteWriter(ArtifactWriter):
    def __init__(self, store: "RemoteStore", folder: str, name: str):
        self.store = store
        self.name = name
        self.folder = folder
        self.final = posixpath.join(folder, name)
        self.partial = self.final + PARTIAL_SUFFIX
        self.location = f"{store.runner.host_name}:{self.final}"
        store.makedirs(folder)
        self.sftp = store.runner.open_sftp_channel()
        try:
            self.handle = self.sftp.open(self.partial, "w")
            self.handle.chmod(0o600)
            self.handle.set_pipelined(True)
        except OSError as exc:
            raise _write_error(exc, store.name, self.location) from None

    def write(self, chunk: bytes) -> None:
        try:
            self.handle.write(chunk)
        except (OSError, EOFError) as exc:
            raise _write_error(exc, self.store.name, self.location) from None
        self.size += len(chunk)

    def commit(self, sha256: str, sidecars: dict[str, bytes] | None = None) -> None:
        try:
            self.handle.close()
            self.handle = None
            self.sftp.close()
            self.store.runner.run(["sync", "--", self.partial])
        except (OSError, EOFError, CommandFailed) as exc:
            raise _write_error(exc, self.store.name, self.location) from None
        sidecars = {**(sidecars or {}), self.name + ".sha256": sha256_line(sha256, self.name)}
        sftp = self.store.runner.sftp()
        written = []
        try:
            try:
                sftp.lstat(self.final)
            except FileNotFoundError:
                pass
            else:  # before any sidecar: an existing backup's must stay as they are
                raise WriteFailed(f"{self.location} already exists on {self.store.name}; a backup is never overwritten",
                                  where=self.store.name, code="name_taken", hint="Wait a second and run again.")
            for name, data in sidecars.items():
                self.store.write_small(self.folder, name, data, absolute=True)
                written.append(name)
            sftp.rename(self.partial, self.final)  # SSH_FXP_RENAME: OpenSSH links, so it never replaces a file
            self.store.runner.run(["sync", "--", self.folder])
        except (OSError, EOFError, CommandFailed, WriteFailed) as exc:
            if written:
                self.store.runner.run(["rm", "-f", "--", *(posixpath.join(self.folder, n) for n in written)], check=False)
            if isinstance(exc, WriteFailed):
                raise
            raise _write_error(exc, self.store.name, self.location) from None

    def abort(self) -> None:
        try:
            if self.handle is not None:
                self.handle.close()
                self.handle = None
            self.sftp.close()
            self.store.runner.sftp().remove(self.partial)
        except (OSError, EOFError, TransportError):
            pass  # the connection is gone: the next run removes the partial


class RemoteStore(Store):
    kind = "ssh"
    renames_aside = True

    def __init__(self, name: str, root: str, runner):
        self.name = name
        self.runner = runner
        self.host_name = runner.host_name
        self._root = root
        self._resolved: str | None = None

    @property
    def root(self) -> str:
        if self._resolved is None:
            root = self._root
            if root.startswith("~"):
                home = self.runner.sftp().normalize(".")
                root = home + root[1:]
            self._resolved = posixpath.normpath(root)
        return self._resolved

    def _dir(self, folder: str) -> str:
        return posixpath.join(self.root, folder) if folder and not folder.startswith("/") else (folder or self.root)

    def location(self, folder: str, name: str = "") -> str:
        path = posixpath.join(self._dir(folder), name) if name else self._dir(folder)
        return f"{self.runner.host_name}:{path}"

    def path_of(self, folder: str, name: str = "") -> str:
        return posixpath.join(self._dir(folder), name) if name else self._dir(folder)

    def rename(self, folder: str, old: str, new: str) -> None:
        self.runner.sftp().posix_rename(self.path_of(folder, old), self.path_of(folder, new))
        self.runner.run(["sync", "--", self._dir(folder)])

    def makedirs(self, path: str) -> None:
        sftp = self.runner.sftp()
        parts = []
        while path not in ("", "/"):
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                parts.append(path)
                path = posixpath.dirname(path)
        for part in reversed(parts):
            sftp.mkdir(part, 0o700)

    def _refuse_links(self, folder: str) -> None:
        """No folder between the root and `folder` may be a symlink: a planted link would lead out of the store."""
        sftp = self.runner.sftp()
        path = self.root
        for part in [p for p in folder.split("/") if p] if folder and not folder.startswith("/") else []:
            path = posixpath.join(path, part)
            try:
                if stat.S_ISLNK(sftp.lstat(path).st_mode or 0):
                    raise symlink_refused(self.name, f"{self.runner.host_name}:{path}")
            except FileNotFoundError:
                return

    def list(self, folder: str) -> list[Entry]:
        self._refuse_links(folder)
        try:
            attrs = self.runner.sftp().listdir_attr(self._dir(folder))
        except FileNotFoundError:
            return []
        # OpenSSH's sftp-server lists with lstat: a link is a link, not what it points to.
        return [Entry(a.filename, a.st_size or 0, float(a.st_mtime or 0), stat.S_ISDIR(a.st_mode or 0),
                      is_link=stat.S_ISLNK(a.st_mode or 0)) for a in attrs]

    def make_folder(self, folder: str) -> None:
        self._refuse_links(folder)
        try:
            self.makedirs(self._dir(folder))
        except (OSError, EOFError) as exc:
            raise _write_error(exc, self.name, self.location(folder)) from None

    def writer(self, folder: str, name: str) -> RemoteWriter:
        self._refuse_links(folder)
        return RemoteWriter(self, self._dir(folder), name)

    def write_small(self, folder: str, name: str, data: bytes | Iterable[bytes], mtime: float | None = None,
                    absolute: bool = False) -> None:
        directory = folder if absolute else self._dir(folder)
        if not absolute:
            self._refuse_links(folder)
        self.makedirs(directory)
        final = posixpath.join(directory, name)
        partial = final + PARTIAL_SUFFIX
        sftp = self.runner.sftp()
        try:
            with sftp.open(partial, "w") as handle:
                handle.chmod(0o600)
                handle.set_pipelined(True)
                for chunk in chunks_of(data):
                    handle.write(chunk)
            if mtime is not None:
                sftp.utime(partial, (mtime, mtime))
            self.runner.run(["sync", "--", partial])
            sftp.posix_rename(partial, final)
            self.runner.run(["sync", "--", directory])
        except (OSError, EOFError, CommandFailed) as exc:
            self.runner.run(["rm", "-f", "--", partial], check=False)  # no 0-byte partial left on a full disk
            raise _write_error(exc, self.name, f"{self.runner.host_name}:{final}") from None

    def read_small(self, folder: str, name: str, limit: int = 1 << 20) -> bytes:
        with self.runner.sftp().open(posixpath.join(self._dir(folder), name), "rb") as handle:
            return handle.read(limit)

    def open_read(self, folder: str, name: str) -> BinaryIO:
        return self.runner.open_remote_file(posixpath.join(self._dir(folder), name))

    def remove(self, folder: str, name: str) -> None:
        self.runner.run(["rm", "-rf", "--", posixpath.join(self._dir(folder), name)])

    def exists(self) -> bool:
        try:
            return stat.S_ISDIR(self.runner.sftp().stat(self.root).st_mode or 0)
        except FileNotFoundError:
            return False

    def check_usable(self) -> None:
        sftp, probe = self.runner.sftp(), self.root
        while True:
            try:
                mode = sftp.stat(probe).st_mode or 0
                break
            except FileNotFoundError:
                if probe in ("", "/"):
                    return
                probe = posixpath.dirname(probe)  # missing folders are made by the first backup
        if not stat.S_ISDIR(mode):
            raise not_a_folder(self.name, f"{self.runner.host_name}:{probe}")

    def usage(self) -> Usage:
        probe = self.root
        out = self.runner.run(["df", "-Pk", "--", probe], check=False)
        while out.returncode != 0 and probe not in ("", "/"):
            probe = posixpath.dirname(probe)
            out = self.runner.run(["df", "-Pk", "--", probe], check=False)
        fields = out.stdout_text.strip().splitlines()[-1].split()
        return Usage(total=int(fields[1]) * 1024, free=int(fields[3]) * 1024)
