"""A Proxmox VE storage: vzdump writes there; bak lists (pvesh), measures (pvesm status),
reads (SFTP at `pvesm path`) and removes (`pvesm free`)."""

from __future__ import annotations

import json
from typing import BinaryIO

from bak.errors import BadInput, CommandFailed
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

    def list(self, folder: str) -> list[Entry]:
        """vzdump's own listing; notes and protection appear as the sidecars vzdump writes."""
        rows = json.loads(self.runner.run(content_argv(self.node, self.storage)).stdout_text or "[]")
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
        if name.endswith((".notes", ".protected", ".log")):
            return  # pvesm free removes an archive's sidecars with it
        try:
            self.runner.run(["pvesm", "free", self.volid(name)])
        except CommandFailed as exc:
            exc.hint = "A protected archive cannot be removed (unprotect it in the GUI first)." \
                if "protected" in exc.stderr_tail else exc.hint
            raise

    def usage(self) -> Usage:
        rows = parse_pvesm_status(self.runner.run(["pvesm", "status"]).stdout_text)
        if self.storage not in rows:
            raise BadInput(f"storage {self.storage!r} is not in `pvesm status` on {self.host_name}", where=self.name)
        row = rows[self.storage]
        return Usage(row["total"], row["available"])

    def writer(self, folder: str, name: str):
        raise BadInput(f"{self.name} is a Proxmox storage: only vzdump writes there", where=self.name,
                       hint="List it as a vzdump target's destination; copies go to local or ssh destinations.")
