"""Docker and podman volumes as `docker-vol-{container}-{volume}-{date}.tar.gz`, through the engine's CLI.

The volume's folder (the `Mountpoint` its engine reports) is tarred on the engine's host with
numeric owners, modes, symlinks, empty folders, and with GNU tar also xattrs, ACLs and sparse
files; the tarball streams into every destination at once. Rootless podman keeps a volume under
the user's home with its files owned by sub-uids: there tar runs in podman's user namespace
(`podman unshare`), so the archive holds the owners the containers see, as with a rootful engine.

Containers using the volume are stopped (each with the configured grace time) for a consistent
copy, and started again in every case: a failed tar, SIGTERM and Ctrl-C included (interrupts.py).
Verify reads every member of the tarball with Python's tarfile; a drill restores into a scratch
volume and compares each restored entry with the archive's (manifest.differences).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from bak import manifest, naming
from bak.catalog import Backup, folder_of, safety_folder_of, scan
from bak.config import Target
from bak.errors import BadInput, BakError, CommandFailed, Refused, VerifyFailed
from bak.interrupts import interrupts_deferred, sigterm_raises
from bak.journal import Operation
from bak.methods.base import Context, Method, clear_leftovers, drill_verdict, free_name, fresh_name
from bak.run.base import CHUNK, Runner, operand
from bak.stores import Store
from bak.stores.fanout import FanOut, FanOutResult
from bak.tarball import Damaged, Indexer, IndexingReader, as_manifest, read_index
from bak.verify import HashingReader, passed, recorded_sha256, sha256_problems

# What GNU tar keeps beyond owners and modes; another tar (busybox) gets none of these flags.
TAR_FEATURES = ["--xattrs", "--xattrs-include=*", "--acls"]
# find's view of one entry: type, mode, uid, gid, size, mtime, path below the mountpoint, link target.
FIND_FORMAT = "%y\\0%m\\0%U\\0%G\\0%s\\0%T@\\0%P\\0%l\\0"
_FIND_FIELDS = 8
_FIND_TYPES = {b"f": "f", b"d": "d", b"l": "l", b"b": "device", b"c": "device"}


def inspect_argv(cli: str, volume: str) -> list[str]:
    return [cli, "volume", "inspect", volume]


STAGE_LABEL = "bak.restore-of"  # on a volume a restore or drill makes: whose, so only bak's are ever cleaned up


def volume_create_argv(cli: str, volume: str, target: str | None = None) -> list[str]:
    return [cli, "volume", "create", *(["--label", f"{STAGE_LABEL}={target}"] if target else []), volume]


def volume_remove_argv(cli: str, volume: str) -> list[str]:
    return [cli, "volume", "rm", volume]


def users_argv(cli: str, volume: str) -> list[str]:
    """Running containers that mount the volume, one `ID NAME` a line (both CLIs print this format alike;
    their `--format json` differ)."""
    return [cli, "ps", "--no-trunc", "--filter", f"volume={volume}", "--format", "{{.ID}} {{.Names}}"]


def stop_argv(cli: str, container: str, grace: int) -> list[str]:
    """`-t`: docker 28 calls it --timeout, older docker and podman --time."""
    return [cli, "stop", "-t", str(grace), container]


def start_argv(cli: str, container: str) -> list[str]:
    return [cli, "start", container]


def tar_probe_argv() -> list[str]:
    """Succeeds where tar knows every flag of TAR_FEATURES and --sparse (GNU tar)."""
    return ["tar", *TAR_FEATURES, "--sparse", "-cf", "/dev/null", "-T", "/dev/null"]


def tar_create_argv(mountpoint: str, full: bool) -> list[str]:
    return ["tar", "-C", mountpoint, "--numeric-owner", *(TAR_FEATURES + ["--sparse"] if full else []), "-czf", "-", "."]


def tar_extract_argv(mountpoint: str, full: bool) -> list[str]:
    return ["tar", "-C", mountpoint, "--numeric-owner", "--preserve-permissions", *(TAR_FEATURES if full else []),
            "-xzf", "-"]


def listing_argv(mountpoint: str) -> list[str]:
    return ["find", operand(mountpoint), "-printf", FIND_FORMAT]


def checksums_argv(mountpoint: str) -> list[str]:
    return ["find", operand(mountpoint), "-type", "f", "-exec", "sha256sum", "-z", "--", "{}", "+"]


def emptying_argv(mountpoint: str) -> list[str]:
    return ["find", operand(mountpoint), "-mindepth", "1", "-delete"]


@dataclass(frozen=True)
class Engine:
    """How one host's volumes are reached: the CLI, and where their files are read and written."""

    cli: str
    rootless: bool = False   # podman as a user: volume files belong to sub-uids, read in its user namespace
    full_tar: bool = True    # tar keeps xattrs, ACLs and sparse files (GNU tar)
    owners: bool = True      # files are written as root (or root of the namespace), so owners are restored

    def on_files(self, argv: list[str]) -> list[str]:
        return [self.cli, "unshare", *argv] if self.rootless else argv


def probe_engine(runner: Runner, cli: str) -> Engine:
    """Rootless is podman's own rule: not uid 0."""
    uid = runner.run(["id", "-u"]).stdout_text.strip()
    rootless = cli == "podman" and uid != "0"
    full_tar = runner.run(tar_probe_argv(), check=False).returncode == 0
    return Engine(cli, rootless, full_tar, owners=uid == "0" or rootless)


@dataclass
class Paused:
    """The containers a `containers_stopped` block stopped, and those it could not start again."""

    stopped: list[str] = field(default_factory=list)
    not_restarted: list[str] = field(default_factory=list)


@contextmanager
def containers_stopped(ctx: Context, runner: Runner, engine: Engine, volume: str, grace: int) -> Iterator[Paused]:
    """Running containers that use `volume`, stopped inside the block and started again when it ends,
    whatever ends it. A stop cut short (SIGTERM while the engine waits for the container) is finished
    first, so it cannot undo the start that follows."""
    paused = Paused()
    stopped: list[tuple[str, str]] = []
    stopping = None
    interrupted = False  # by an error or a signal: then nobody reads `paused`, so a failed start is a warning
    try:
        for line in runner.run(users_argv(engine.cli, volume)).stdout_text.splitlines():
            if not line.strip():
                continue
            cid, _, name = line.strip().partition(" ")
            stopping = (cid, name or cid)
            ctx.progress(f"stopping container {stopping[1]} ({engine.cli} stop -t {grace})")
            out = runner.run(stop_argv(engine.cli, cid, grace), timeout=grace + 60, check=False)
            if out.returncode != 0:  # docker exits 1, podman 125
                raise CommandFailed(f"{engine.cli} could not stop container {stopping[1]}: "
                                    f"{(out.stderr_text.strip().splitlines() or ['exit ' + str(out.returncode)])[-1]}",
                                    returncode=out.returncode, stderr_tail=out.stderr_text[-2000:], where=runner.host_name,
                                    hint="Nothing was copied: a copy beside a running container is not consistent. Check "
                                         f"it ({engine.cli} inspect {stopping[1]}), or set stop_containers: false.")
            stopped.append(stopping)
            paused.stopped.append(stopping[1])
            stopping = None
        yield paused
    except BaseException:
        interrupted = True
        raise
    finally:
        with interrupts_deferred():
            if stopping:
                _quietly(runner, stop_argv(engine.cli, stopping[0], grace), grace + 60)
                stopped.append(stopping)
            for cid, name in stopped:
                problem = _quietly(runner, start_argv(engine.cli, cid), 120)
                if problem:
                    paused.not_restarted.append(f"{name}: {problem}")
            if paused.not_restarted and interrupted:
                ctx.warnings.append("containers stopped for the copy could not be started again: "
                                    + "; ".join(paused.not_restarted))


def _quietly(runner: Runner, argv: list[str], timeout: float) -> str | None:
    """Run a cleanup step; its failure is returned, never raised (the next step must still run)."""
    try:
        out = runner.run(argv, check=False, timeout=timeout)
    except BakError as exc:
        return exc.message
    return None if out.returncode == 0 else (out.stderr_text.strip().splitlines() or [f"exit {out.returncode}"])[-1]


def volume_items(runner: Runner, engine: Engine, mountpoint: str, checksums: bool = True) -> list[manifest.Item]:
    """Every entry of a volume as find and sha256sum see it on its host (the root is `.`)."""
    fields = runner.run(engine.on_files(listing_argv(mountpoint))).stdout.split(b"\0")
    digests: dict[str, str] = {}
    if checksums:
        prefix = mountpoint.rstrip("/") + "/"
        for line in runner.run(engine.on_files(checksums_argv(mountpoint))).stdout.split(b"\0"):
            digest, _, path = line.decode("utf-8", "surrogateescape").partition("  ")
            if path:
                digests[path.removeprefix(prefix)] = digest
    items = []
    for i in range(0, len(fields) - _FIND_FIELDS + 1, _FIND_FIELDS):
        kind, mode, uid, gid, size, mtime, path, target = fields[i:i + _FIND_FIELDS]
        path_text = manifest.fs_text(path) or "."
        item_type = _FIND_TYPES.get(kind, "special")
        items.append(manifest.Item(item_type, path_text, int(size), int(mtime.split(b".")[0]), int(mode, 8), int(uid),
                                   int(gid), digests.get(path_text), manifest.fs_text(target) if item_type == "l" else None,
                                   written=False))
    return items


class DockerVolume(Method):
    name = "docker_volume"

    # -- the engine ----------------------------------------------------------------------
    def _inspect(self, runner: Runner, engine: Engine, volume: str) -> dict | None:
        """The engine's record of a volume; None when it has none."""
        out = runner.run(inspect_argv(engine.cli, volume), check=False)
        if out.returncode != 0:
            if "no such volume" in out.stderr_text.lower():
                return None
            raise CommandFailed(f"{engine.cli} volume inspect {volume} failed: {out.stderr_text.strip()[-300:]}",
                                returncode=out.returncode, stderr_tail=out.stderr_text[-2000:], where=runner.host_name,
                                hint=f"Is the {engine.cli} engine running there? Try: {engine.cli} info")
        return json.loads(out.stdout_text)[0]

    def mountpoint(self, runner: Runner, engine: Engine, volume: str) -> str:
        """The folder that holds the volume's files on its host, refused when bak cannot read it there."""
        info = self._inspect(runner, engine, volume)
        if info is None:
            raise BadInput(f"{engine.cli} volume {volume!r} not found on {runner.host_name}", where="docker_volume.volume",
                           hint=f"List volumes with: {engine.cli} volume ls")
        options = info.get("Options") or {}
        if info.get("Driver", "local") != "local" or "device" in options or "type" in options:
            raise Refused(f"volume {volume} is mounted from elsewhere ({info.get('Driver')} {options}): its folder is "
                          f"empty unless a container uses it", where="docker_volume.volume", code="volume_not_local",
                          hint="Back up what it mounts (the NFS export, the bind source) with an rsync target instead.")
        path = info.get("Mountpoint") or ""
        if not path.startswith("/") or runner.run(engine.on_files(["test", "-d", path]), check=False).returncode != 0:
            raise Refused(f"volume {volume}'s folder {path!r} is not on {runner.host_name}", where="docker_volume.volume",
                          code="volume_not_here", hint="Run bak where the engine keeps its volumes (Docker Desktop keeps "
                          "them inside its VM): set the target's host to that machine.")
        return path

    # -- create ----------------------------------------------------------------------------
    def preflight(self, ctx: Context, target: Target) -> None:
        runner = ctx.hosts.runner(target.host)
        self.mountpoint(runner, probe_engine(runner, target.options["cli"]), target.options["volume"])

    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        options = target.options
        listings = [scan(store, target) for store in stores]
        for store, listing in zip(stores, listings):
            clear_leftovers(ctx, store, listing)
        name = fresh_name(ctx, target, listings,
                          naming.docker_volume_name(options["container"], options["volume"], ctx.now),
                          naming.docker_volume_name(options["container"], options["volume"], ctx.now, with_time=True))
        runner = ctx.hosts.runner(target.host)
        engine = probe_engine(runner, options["cli"])
        folder = folder_of(target)
        with sigterm_raises():
            mountpoint = self.mountpoint(runner, engine, options["volume"])
            for store in stores:
                store.refuse_existing(folder, name)
            started = time.monotonic()
            if options["stop_containers"]:
                with containers_stopped(ctx, runner, engine, options["volume"], options["stop_timeout"]) as paused:
                    written = self._tar(runner, engine, target, stores, folder, name, mountpoint)
            else:
                paused = Paused()
                written = self._tar(runner, engine, target, stores, folder, name, mountpoint, live=True)
        op.bytes, op.checksum = written.size, written.sha256
        result = {"target": target.name, "name": name, "size": written.size, "sha256": written.sha256,
                  "duration_s": round(time.monotonic() - started, 3), "stopped": paused.stopped,
                  "copies": [{"store": c.store, "location": c.location, "ok": c.ok, "error": c.error} for c in written.copies]}
        if paused.not_restarted:
            result["problems"] = [{"code": "container_not_restarted", "where": target.name,
                                   "message": f"{target.name}: backed up, but containers bak stopped did not start again: "
                                              + "; ".join(paused.not_restarted),
                                   "hint": f"Start them by hand ({engine.cli} start NAME) and check their logs."}]
        return result

    def _tar(self, runner: Runner, engine: Engine, target: Target, stores: list[Store], folder: str, name: str,
             mountpoint: str, *, sidecars: dict[str, bytes] | None = None, indexer: Indexer | None = None,
             live: bool = False) -> FanOutResult:
        """The volume's tarball streamed into every store (and to `indexer`, when given)."""
        fan = FanOut(stores, folder, name)
        sink = fan.write if indexer is None else (lambda chunk: (fan.write(chunk), indexer.feed(chunk)))
        try:
            runner.run(engine.on_files(tar_create_argv(mountpoint, engine.full_tar)), stdout=sink,
                       timeout=target.timeout.total_seconds())
        except CommandFailed as exc:
            fan.abort()
            if live and exc.returncode == 1:
                exc.hint = "Files changed while tar read them: set stop_containers: true for a consistent copy."
            raise
        except BaseException:
            fan.abort()
            raise
        return fan.commit(sidecars)

    # -- verify ----------------------------------------------------------------------------
    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """sha256 against the sidecar and every member read by tarfile (gzip's CRC included), in one read."""
        expected = recorded_sha256(store, backup)
        damage = None
        rows: dict = {}
        with store.open_read(backup.folder, backup.name) as raw:
            reader = HashingReader(raw)
            try:
                rows = read_index(reader)
            except Damaged as exc:
                damage = str(exc)
            reader.drain()
        actual = reader.hash.hexdigest()
        result = {"store": store.name, "name": backup.name, "size": reader.size, "sha256": actual,
                  "checksum": "missing" if expected is None else ("ok" if expected == actual else "mismatch"),
                  "format": "failed" if damage else "ok", "entries": len(rows)}
        problems = sha256_problems(expected, actual) + ([f"not a readable .tar.gz: {damage}"] if damage else [])
        return passed(store, backup, result, problems)

    # -- restore ---------------------------------------------------------------------------
    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        runner = ctx.hosts.runner(target.host)
        engine = probe_engine(runner, target.options["cli"])
        volume = into or f"{target.options['volume']}-restored-{ctx.now:%Y%m%d-%H%M%S}"
        if not naming.is_safe_name(volume):
            raise BadInput(f"{volume!r} is not a safe volume name", where="--into")
        with sigterm_raises():
            exists = self._inspect(runner, engine, volume) is not None
            if exists and not force:
                raise Refused(f"{engine.cli} volume {volume} already exists; restore never overwrites", where="--into",
                              code="would_overwrite", hint="Omit --into to restore into a new volume, or pass --force.")
            started = time.monotonic()
            result = {"target": target.name, "backup": backup.name, "store": store.name, "volume": volume,
                      "replaced": exists, "safety_backup": None}
            if exists:
                result.update(self._replace(ctx, runner, engine, target, store, backup, volume))
            else:
                self._restore_new(ctx, target, runner, engine, store, backup, volume)
        result["duration_s"] = round(time.monotonic() - started, 3)
        return result

    def _restore_new(self, ctx: Context, target: Target, runner: Runner, engine: Engine, store: Store, backup: Backup,
                     volume: str, indexer: Indexer | None = None) -> None:
        """A new volume filled from the backup; removed again if the restore fails: no half volume stays. A volume
        cannot be renamed: it is journaled while it fills, so one a killed run left is removed by the next."""
        ctx.stage(f"volume:{volume}")
        runner.run(volume_create_argv(engine.cli, volume, target.name))
        try:
            self._fill(runner, engine, store, backup, volume, self.mountpoint(runner, engine, volume), indexer)
        except BaseException:
            with interrupts_deferred():
                _quietly(runner, volume_remove_argv(engine.cli, volume), 120)
                ctx.unstage(f"volume:{volume}")
            raise
        ctx.unstage(f"volume:{volume}")

    def remove_stage(self, ctx: Context, target: Target, where: str) -> bool:
        """A volume a killed restore or drill of this target made (it carries bak's label naming the target)."""
        kind, _, volume = where.partition(":")
        if kind != "volume" or not naming.is_safe_name(volume):
            return False
        runner = ctx.hosts.runner(target.host)
        engine = probe_engine(runner, target.options["cli"])
        info = self._inspect(runner, engine, volume)
        if info is None or (info.get("Labels") or {}).get(STAGE_LABEL) != target.name:
            return False
        runner.run(volume_remove_argv(engine.cli, volume))
        return True

    def _fill(self, runner: Runner, engine: Engine, store: Store, backup: Backup, volume: str, mountpoint: str,
              indexer: Indexer | None = None) -> None:
        """The backup extracted into the volume's folder, checked against its .sha256 as it streams."""
        expected = recorded_sha256(store, backup)
        with store.open_read(backup.folder, backup.name) as raw:
            hashing = HashingReader(raw)
            source = hashing if indexer is None else IndexingReader(hashing, indexer)
            try:
                runner.run(engine.on_files(tar_extract_argv(mountpoint, engine.full_tar)), stdin=source)
            except CommandFailed:
                # tar stops on a damaged archive: if the copy does not match its .sha256, it is the copy's fault
                # (VerifyFailed: the restore goes on to the next copy); else tar's own error stands.
                try:
                    while source.read(CHUNK):
                        pass
                except OSError:
                    pass
                if expected and hashing.hash.hexdigest() != expected:
                    raise VerifyFailed(f"{backup.name} on {store.name} does not match its .sha256 (damaged copy)",
                                       where=f"{store.name}:{backup.name}") from None
                raise
            while source.read(CHUNK):
                pass
        if expected and hashing.hash.hexdigest() != expected:
            raise VerifyFailed(f"{backup.name} on {store.name} does not match its .sha256; volume {volume} held a bad "
                               "restore", where=f"{store.name}:{backup.name}", hint="Restore another copy (--from).")

    def _replace(self, ctx: Context, runner: Runner, engine: Engine, target: Target, store: Store, backup: Backup,
                 volume: str) -> dict:
        """--force: with the volume's containers stopped, tar it into a safety copy, remove what the copy holds
        (refused if anything is not in it), extract the backup, start the containers again."""
        mountpoint = self.mountpoint(runner, engine, volume)
        self.verify(ctx, target, store, backup)  # a damaged copy is found before the volume is emptied, not after
        with containers_stopped(ctx, runner, engine, volume, target.options["stop_timeout"]) as paused:
            safety, saved = self._safety_copy(ctx, runner, engine, target, store, volume, mountpoint)
            unsaved = sorted(item.path for item in volume_items(runner, engine, mountpoint, checksums=False)
                             if item.path not in saved)
            if unsaved:
                raise Refused(f"{len(unsaved)} entries of volume {volume} are not in its safety copy "
                              f"({', '.join(unsaved[:5])}); nothing was removed", where=volume,
                              code="safety_copy_incomplete", hint="tar skips sockets: remove them (or what else is "
                              "listed) by hand, or restore into a new volume (omit --into).")
            runner.run(engine.on_files(emptying_argv(mountpoint)))
            self._fill(runner, engine, store, backup, volume, mountpoint)
        if paused.not_restarted:
            raise CommandFailed(f"volume {volume} restored from {backup.name}, but containers using it did not start "
                                f"again: {'; '.join(paused.not_restarted)}", where=volume, code="container_not_restarted",
                                hint=f"Start them by hand ({engine.cli} start NAME) and check their logs.")
        return {"safety_backup": safety, "stopped": paused.stopped}

    def _safety_copy(self, ctx: Context, runner: Runner, engine: Engine, target: Target, store: Store, volume: str,
                     mountpoint: str) -> tuple[str, dict]:
        """The volume about to be emptied, tarred apart from the backups (protected, never picked), and its index."""
        folder = safety_folder_of(target)
        name = free_name(store, folder,
                         lambda when: naming.docker_volume_name(target.options["container"], volume, when, with_time=True))
        indexer = Indexer()
        try:
            copy = self._tar(runner, engine, target, [store], folder, name, mountpoint,
                             sidecars={name + ".protected": b""}, indexer=indexer)
            saved = indexer.result()
        except Damaged as exc:
            raise Refused(f"the safety copy of volume {volume} did not read back ({exc}), so it was not replaced",
                          where=target.name, code="safety_copy_failed") from None
        finally:
            indexer.close()
        if not copy.ok:
            raise Refused(f"the safety copy of volume {volume} failed, so it was not replaced", where=target.name,
                          code="safety_copy_failed", hint=copy.copies[0].error["message"])
        where = f"{store.name}:{folder}/{name}"
        ctx.warnings.append(f"safety copy of volume {volume} before replacing it: {where} (kept apart, protected)")
        return where, saved

    # -- drill -----------------------------------------------------------------------------
    def drill(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """Restore into a scratch volume, compare every entry with the archive's member, remove the volume."""
        runner = ctx.hosts.runner(target.host)
        engine = probe_engine(runner, target.options["cli"])
        scratch = f"bak-drill-{target.options['volume']}-{ctx.now:%Y%m%d%H%M%S}"
        result = {"target": target.name, "backup": backup.name, "store": store.name, "scratch_volume": scratch,
                  "checks": []}
        diff: dict = {}
        indexer = Indexer()
        ctx.stage(f"volume:{scratch}")  # until it is removed below, whatever ends the drill
        with sigterm_raises():
            try:
                started = time.monotonic()
                self._restore_new(ctx, target, runner, engine, store, backup, scratch, indexer)
                result["restore_duration_s"] = round(time.monotonic() - started, 3)
                try:
                    archived = indexer.result()
                except Damaged as exc:
                    raise VerifyFailed(f"drill of {backup.name}: the archive is damaged ({exc})", where=f"{store.name}:"
                                       f"{backup.name}", code="drill_failed", details={"result": result}) from None
                restored = volume_items(runner, engine, self.mountpoint(runner, engine, scratch))
                diff = manifest.differences(as_manifest(archived), restored, owners=engine.owners)
                what = "type, mode, owner, size, mtime, link target, content" if engine.owners else \
                    "type, mode, size, mtime, link target, content (owners not restorable: not root)"
                result["checks"].append({"check": f"{len(archived)} entries restored as archived ({what})",
                                         "ok": not any(diff.values()),
                                         "differences": [p for k in ("missing", "unexpected", "changed") for p in diff[k]][:20]})
            finally:
                indexer.close()
                with interrupts_deferred():
                    problem = _quietly(runner, volume_remove_argv(engine.cli, scratch), 120)
                if problem and "no such volume" not in problem.lower():
                    ctx.warnings.append(f"could not remove the drill's scratch volume {scratch}: {problem}")
                else:
                    ctx.unstage(f"volume:{scratch}")
        return drill_verdict(result, diff, store, backup, "the restored volume differs from the archive")
