"""A Proxmox VE storage: vzdump writes there; bak lists (pvesh), measures (pvesm status),
reads (SFTP at `pvesm path`) and removes (`pvesm free`, then lists again: it exits 0 even when
nothing was removed). A Proxmox Backup Server storage keeps no archive files: refused."""

from __future__ import annotations

import json
from typing import BinaryIO

from bak.errors import BadInput, CommandFailed, Refused
from bak.stores.base import Entry, Store, Usage


def parse_pvesm_status(text: str) -> dict[str, dict]:
    """Both header styles (`Total (KiB)` and the older `Total`): data rows have 7 columns, KiB."""
    rows = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 7 and fields[3].isdigit():
            rows[fields[0]] = {"type": fields[1], "status": fields[2], "total": int(fields[3]) * 1024,
                               "used": int(fields[4]) * 1024, "available": int(fields[5]) * 1024}
    return rows


def content_argv(node: str, storage: str) -> list[str]:
    return ["pvesh", "get", f"/nodes/{node}/storage/{storage}/content", "--content", "backup", "--output-format", "json"]


class ProxmoxStore(Store):
    kind = "proxmox"
    per_target_folders = False  # vzdump's dump folder: a target's archives are its VMID's
    checksummed = False  # vzdump writes no .sha256: an archive it lists is one it finished

    def __init__(self, name: str, storage: str, node: str | None, runner):
        self.name = name
        self.storage = storage
        self.runner = runner
        self.host_name = runner.host_name
        self._node = node
        self._paths: dict[str, str] = {}
        self._row: dict | None = None
        self.notes: dict[str, str] = {}

    @property
    def node(self) -> str:
        if self._node is None:
            self._node = self.runner.run(["hostname", "-s"]).stdout_text.strip()
        return self._node

    def volid(self, name: str) -> str:
        return f"{self.storage}:backup/{name}"

    def location(self, folder: str, name: str = "") -> str:
        return f"{self.host_name}:{self.volid(name)}" if name else f"{self.host_name}:{self.storage}"

    def _rows(self) -> list[dict]:
        return json.loads(self.runner.run(content_argv(self.node, self.storage)).stdout_text or "[]")

    def list(self, folder: str) -> list[Entry]:
        """vzdump's own listing; notes and protection appear as the sidecars vzdump writes."""
        self.status_row()
        rows = self._rows()
        entries = []
        for row in rows:
            name = row["volid"].split(":backup/", 1)[-1]
            entries.append(Entry(name, int(row["size"]), float(row.get("ctime", 0)), False))
            if "notes" in row:
                self.notes[name] = row["notes"]
                entries.append(Entry(name + ".notes", 0, 0.0, False))
            if row.get("protected"):
                entries.append(Entry(name + ".protected", 0, 0.0, False))
        return entries

    def path_of(self, folder: str, name: str = "") -> str:
        if name not in self._paths:
            self._paths[name] = self.runner.run(["pvesm", "path", self.volid(name)]).stdout_text.strip()
        return self._paths[name]

    def open_read(self, folder: str, name: str) -> BinaryIO:
        return self.runner.open_remote_file(self.path_of(folder, name))

    def read_small(self, folder: str, name: str, limit: int = 1 << 20) -> bytes:
        raise FileNotFoundError(name)  # vzdump writes no .sha256 or .meta.json

    def remove(self, folder: str, name: str) -> None:
        """`pvesm free` runs the removal in a task and exits 0 whatever became of it (pve-storage
        API2/Storage/Content.pm delete; a protected archive or an unlink error is only printed): the
        volume is gone only when the storage no longer lists it."""
        if name.endswith((".notes", ".protected", ".log")):
            return  # pvesm free removes an archive's sidecars with it
        volid = self.volid(name)
        out = self.runner.run(["pvesm", "free", volid], check=False, merge_stderr=True)
        if out.returncode == 0 and all(row.get("volid") != volid for row in self._rows()):
            return
        said = out.stdout_text.strip().splitlines()
        reason = said[-1] if said else f"exit {out.returncode}"
        protected = "protected" in reason
        raise CommandFailed(f"pvesm free {volid} did not remove it: {reason}", returncode=out.returncode,
                            stderr_tail="\n".join(said[-20:]), where=self.name,
                            code="protected_volume" if protected else "remove_failed",
                            hint="It is protected: unprotect it first (GUI: Backups > Change Protection, or "
                                 f"pvesh set /nodes/{self.node}/storage/{self.storage}/content/{volid} --protected 0)."
                            if protected else "Look at the storage on the host (pvesm list); the archive is still there.")

    def status_row(self) -> dict:
        """This storage's `pvesm status` row, read once; a PBS storage is refused: its backups are chunks in
        a datastore, not archive files bak can list, copy or verify."""
        if self._row is None:
            rows = parse_pvesm_status(self.runner.run(["pvesm", "status"]).stdout_text)
            if self.storage not in rows:
                raise BadInput(f"storage {self.storage!r} is not in `pvesm status` on {self.host_name}", where=self.name)
            self._row = rows[self.storage]
        if self._row["type"] == "pbs":
            raise Refused(f"{self.name}: storage {self.storage!r} on {self.host_name} is a Proxmox Backup Server: it keeps "
                          "no archive files bak could list, copy or verify", where=f"destinations.{self.name}.storage",
                          code="pbs_storage", hint="Name a file storage (dir, nfs, cifs: pvesm status) as the vzdump "
                                                   "target's storage, and let PBS's own verify and sync jobs look after "
                                                   "the PBS datastore.")
        return self._row

    def usage(self) -> Usage:
        self._row = None  # measured now, not when first listed
        row = self.status_row()
        return Usage(row["total"], row["available"])

    def writer(self, folder: str, name: str):
        raise BadInput(f"{self.name} is a Proxmox storage: only vzdump writes there", where=self.name,
                       hint="List it as a vzdump target's destination; copies go to local or ssh destinations.")
