"""One module per backup method, each with the same small interface (see base.Method)."""

from __future__ import annotations

from bak.errors import BadInput
from bak.methods.base import Context, Method


def method_for(name: str) -> Method:
    if name == "pg_dump":
        from bak.methods.pg_dump import PgDump

        return PgDump()
    if name in ("rsync", "config"):
        from bak.methods.rsync import RsyncSnapshot

        return RsyncSnapshot()
    if name == "vault":
        from bak.methods.vault import Vault

        return Vault()
    if name == "vzdump":
        from bak.methods.vzdump import Vzdump

        return Vzdump()
    if name == "docker_volume":
        from bak.methods.docker_volume import DockerVolume

        return DockerVolume()
    raise BadInput(f"method {name!r} cannot run in this version of bak yet", where="method", code="method_unavailable",
                   hint="Methods: vzdump, pg_dump, rsync, config, vault, docker_volume.")


__all__ = ["Context", "Method", "method_for"]
