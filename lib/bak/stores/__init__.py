"""Where backups live: a folder here or a folder on an SSH host, one interface.

Every artifact is written through `fanout.FanOut`: streamed to `NAME.partial`, hashed
while it streams, fsynced, renamed, then its `NAME.sha256` sidecar written.
"""

from __future__ import annotations

from bak.config import Config, Destination
from bak.errors import BadInput
from bak.naming import FOLDERS
from bak.run import Hosts
from bak.stores.base import Entry, Store, Usage


def open_store(destination: Destination, hosts: Hosts) -> Store:
    if destination.kind == "local":
        from bak.stores.local import LocalStore

        return LocalStore(destination.name, destination.path)
    if destination.kind == "ssh":
        from bak.stores.remote import RemoteStore

        return RemoteStore(destination.name, destination.path, hosts.runner(destination.host))
    if destination.kind == "restic":
        from bak.stores.restic import ResticStore

        return ResticStore(destination.name, destination.repository, destination.password)
    if destination.kind == "proxmox":
        from bak.stores.proxmox import ProxmoxStore

        return ProxmoxStore(destination.name, destination.storage, destination.node, hosts.runner(destination.host))
    raise BadInput(f"destination {destination.name!r} of kind {destination.kind!r} cannot hold files written by bak",
                   where=f"destinations.{destination.name}.kind",
                   hint="Use a local or ssh destination for this target.")


def stores_for(config: Config, names, hosts: Hosts) -> list[Store]:
    return [open_store(config.destinations[name], hosts) for name in names]


__all__ = ["Entry", "Store", "Usage", "FOLDERS", "open_store", "stores_for"]
