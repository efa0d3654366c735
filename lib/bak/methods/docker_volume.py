"""Docker volumes as `docker-vol-{container}-{volume}-{date}.tar.gz`, through the docker CLI.

The containers using the volume may be stopped for a consistent copy; they are started again
in every case, failure included. The tarball streams into every destination at once.
"""

from __future__ import annotations

import json
import time

from bak import naming
from bak.catalog import Backup, folder_of, safety_folder_of, scan
from bak.config import Target
from bak.errors import BadInput, CommandFailed, Refused, VerifyFailed
from bak.journal import Operation
from bak.methods.base import Context, Method, clear_leftovers, free_name, fresh_name
from bak.stores import Store
from bak.stores.fanout import FanOut
from bak.verify import HashingReader, check_file, recorded_sha256


def inspect_argv(volume: str) -> list[str]:
    return ["docker", "volume", "inspect", volume]


def users_argv(volume: str) -> list[str]:
    return ["docker", "ps", "-q", "--filter", f"volume={volume}"]


def tar_argv(mountpoint: str) -> list[str]:
    return ["tar", "-C", mountpoint, "--numeric-owner", "-czf", "-", "."]


class DockerVolume(Method):
    name = "docker_volume"

    def mountpoint(self, runner, volume: str) -> str:
        out = runner.run(inspect_argv(volume), check=False)
        if out.returncode != 0:
            raise BadInput(f"docker volume {volume!r} not found: {out.stderr_text.strip()}", where="docker_volume.volume",
                           hint="List volumes with: docker volume ls")
        return json.loads(out.stdout_text)[0]["Mountpoint"]

    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        options = target.options
        listings = [scan(store, target) for store in stores]
        for store, listing in zip(stores, listings):
            clear_leftovers(ctx, store, listing)
        name = fresh_name(ctx, target, listings,
                          naming.docker_volume_name(options["container"], options["volume"], ctx.now),
                          naming.docker_volume_name(options["container"], options["volume"], ctx.now, with_time=True))
        result = self._backup(ctx, target, stores, folder_of(target), name, options["volume"])
        op.bytes, op.checksum = result["size"], result["sha256"]
        return result

    def _backup(self, ctx: Context, target: Target, stores: list[Store], folder: str, name: str, volume: str,
                sidecars: dict[str, bytes] | None = None) -> dict:
        """A volume's tarball, streamed to every store; also the safety copy a forced restore takes first.
        A name that carries only the day gets its time from its .sha256, written as the tarball ends (catalog)."""
        options = target.options
        runner = ctx.hosts.runner(target.host)
        for store in stores:
            store.refuse_existing(folder, name)
        mountpoint = self.mountpoint(runner, volume)
        users = runner.run(users_argv(volume)).stdout_text.split()
        stopped = []
        started = time.monotonic()
        try:
            if options["stop_containers"] and users:
                runner.run(["docker", "stop", *users])
                stopped = users
            fan = FanOut(stores, folder, name)
            try:
                runner.run(tar_argv(mountpoint), stdout=fan.write, timeout=target.timeout.total_seconds())
            except BaseException:
                fan.abort()
                raise
            written = fan.commit(sidecars)
        finally:
            if stopped:
                restart = runner.run(["docker", "start", *stopped], check=False)
                if restart.returncode != 0:
                    ctx.warnings.append(f"could not restart containers {', '.join(stopped)}: {restart.stderr_text.strip()}")
        return {"target": target.name, "name": name, "size": written.size, "sha256": written.sha256,
                "duration_s": round(time.monotonic() - started, 3), "stopped": stopped,
                "copies": [{"store": c.store, "location": c.location, "ok": c.ok, "error": c.error} for c in written.copies]}

    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """sha256, gzip's CRC and a full tar listing, in one read."""
        return check_file(store, backup, ctx.hosts.runner("local"), ["tar", "-tzf", "-"])

    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        runner = ctx.hosts.runner(target.host)
        original = target.options["volume"]
        volume = into or f"{original}-restored-{ctx.now:%Y%m%d-%H%M%S}"
        if not naming.is_safe_name(volume):
            raise BadInput(f"{volume!r} is not a safe volume name", where="--into")
        exists = runner.run(inspect_argv(volume), check=False).returncode == 0
        if exists and not force:
            raise Refused(f"docker volume {volume} already exists; restore never overwrites", where="--into",
                          code="would_overwrite", hint="Omit --into to restore into a new volume, or pass --force.")
        safety = None
        if exists:
            safety = self._safety_copy(ctx, target, store, volume)
        else:
            runner.run(["docker", "volume", "create", volume])
        mountpoint = self.mountpoint(runner, volume)
        if exists:
            # The safety backup is taken: empty the volume so no stale file survives the restore.
            runner.run(["find", mountpoint, "-mindepth", "1", "-delete"])
        expected = recorded_sha256(store, backup)
        started = time.monotonic()
        with store.open_read(backup.folder, backup.name) as raw:
            reader = HashingReader(raw)
            runner.run(["tar", "-C", mountpoint, "--numeric-owner", "-xzf", "-"], stdin=reader)
            reader.drain()
        if expected and reader.hash.hexdigest() != expected:
            raise CommandFailed(f"{backup.name} does not match its .sha256; volume {volume} holds a bad restore",
                                where=volume, code="verify_failed", hint="Remove that volume and restore another copy.")
        return {"target": target.name, "backup": backup.name, "store": store.name, "volume": volume,
                "replaced": exists, "safety_backup": safety, "duration_s": round(time.monotonic() - started, 3)}

    def _safety_copy(self, ctx: Context, target: Target, store: Store, volume: str) -> str:
        """The volume about to be emptied and refilled, tarred apart from the backups (protected, never picked)."""
        folder = safety_folder_of(target)
        name = free_name(store, folder,
                         lambda when: naming.docker_volume_name(target.options["container"], volume, when, with_time=True))
        copy = self._backup(ctx, target, [store], folder, name, volume, {name + ".protected": b""})
        if not all(c["ok"] for c in copy["copies"]):
            raise Refused(f"the safety copy of volume {volume} failed, so it was not replaced", where=target.name,
                          code="safety_copy_failed", hint=copy["copies"][0]["error"]["message"])
        where = f"{store.name}:{folder}/{name}"
        ctx.warnings.append(f"safety copy of volume {volume} before replacing it: {where} (kept apart, protected)")
        return where

    def drill(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """Restore into a scratch volume, compare its files with the tarball's listing, remove it."""
        runner = ctx.hosts.runner(target.host)
        scratch = f"bak-drill-{target.options['volume']}-{ctx.now:%Y%m%d%H%M%S}"
        result = {"target": target.name, "backup": backup.name, "store": store.name, "checks": []}
        try:
            restored = self.restore(ctx, target, store, backup, into=scratch, force=False, options={})
            result["restore_duration_s"] = restored["duration_s"]
            with store.open_read(backup.folder, backup.name) as raw:
                listed = {line.rstrip("/").removeprefix("./") for line in
                          ctx.hosts.runner("local").run(["tar", "-tzf", "-"], stdin=raw).stdout_text.splitlines()} - {"", "."}
            mountpoint = self.mountpoint(runner, scratch)
            present = {p for p in runner.run(["find", mountpoint, "-mindepth", "1", "-printf", "%P\\n"]).stdout_text.splitlines()}
            result["checks"].append({"check": f"{len(listed)} entries restored", "ok": listed == present,
                                     "differences": sorted(listed ^ present)[:20]})
        finally:
            runner.run(["docker", "volume", "rm", scratch], check=False)
        result["passed"] = all(c["ok"] for c in result["checks"])
        if not result["passed"]:
            raise VerifyFailed(f"drill of {backup.name}: the restored volume differs from the archive", where=target.name,
                               code="drill_failed", details={"result": result})
        return result
