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
        from bak.run.hosts import known_hosts_path
        from bak.stores.restic import ResticStore

        ssh_host = hosts.config.host(destination.host) if destination.host != "local" else None
        aws = {key: ref for key in ("aws_access_key_id", "aws_secret_access_key")
               if (ref := getattr(destination, key)) is not None}
        return ResticStore(destination.name, destination.repository, destination.password, ssh_host=ssh_host,
                           known_hosts=known_hosts_path(ssh_host) if ssh_host else None, aws=aws,
                           limit_upload_kib=destination.limit_upload_kib, retry_seconds=destination.retry_seconds,
                           ssh_check=(lambda: hosts.runner(destination.host).client()) if ssh_host else None)
    if destination.kind == "proxmox":
        from bak.stores.proxmox import ProxmoxStore

        return ProxmoxStore(destination.name, destination.storage, destination.node, hosts.runner(destination.host))
    raise BadInput(f"destination {destination.name!r} of kind {destination.kind!r} cannot hold files written by bak",
                   where=f"destinations.{destination.name}.kind",
                   hint="Use a local or ssh destination for this target.")


def stores_for(config: Config, names, hosts: Hosts) -> list[Store]:
    return [open_store(config.destinations[name], hosts) for name in names]


__all__ = ["Entry", "Store", "Usage", "FOLDERS", "open_store", "stores_for"]
