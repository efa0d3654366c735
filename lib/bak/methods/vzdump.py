"""Proxmox VMs and containers: vzdump on the PVE host, copies streamed to other destinations,
VMA and container-tar verification, restore to a new VMID (from the Proxmox storage or straight
from a copy), restore drills."""

from __future__ import annotations

import posixpath
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from bak.catalog import Backup, folder_of, scan
from bak.config import Target
from bak.errors import BadInput, BakError, CommandFailed, NoSpace, Refused, TransportError, VerifyFailed
from bak.journal import Operation
from bak.methods.base import Context, Method
from bak.run.base import CHUNK, Runner
from bak.stores import Store
from bak.stores.fanout import FanOut
from bak.stores.proxmox import parse_pvesm_status
from bak.verify import HashingReader, recorded_sha256

DEFAULT_RESTORE_RANGE = (9000, 9999)
# Storage types whose backups are files in a dump/ folder (PBS keeps its own chunk store).
FILE_STORAGE_TYPES = ("dir", "nfs", "cifs", "cephfs", "glusterfs", "btrfs")


# --- argv builders and parsers (pure) --------------------------------------------------------
def vzdump_argv(options: dict) -> list[str]:
    argv = ["vzdump", str(options["vmid"]), "--mode", options["mode"], "--compress", options["compress"],
            "--storage", options["storage"]]
    if options.get("zstd_threads"):
        argv += ["--zstd", str(options["zstd_threads"])]
    if options.get("bwlimit_kib"):
        argv += ["--bwlimit", str(options["bwlimit_kib"])]
    if options.get("notes_template"):
        argv += ["--notes-template", options["notes_template"]]
    if options.get("protected"):
        argv += ["--protected", "1"]
    return argv


def guest_of(name: str) -> str:
    return "lxc" if name.startswith("vzdump-lxc-") else "qemu"


def restore_argv(guest: str, archive: str, vmid: int, *, storage: str | None, force: bool) -> list[str]:
    tail = (["--storage", storage] if storage else []) + (["--force", "1"] if force else [])
    if guest == "lxc":
        return ["pct", "restore", str(vmid), archive, "--unique", "1", *tail]
    return ["qmrestore", archive, str(vmid), "--unique", "1", *tail]


@dataclass
class VzdumpRun:
    ok: bool
    archive: str | None
    size_text: str | None
    reason: str | None


def parse_vzdump(stderr: str) -> VzdumpRun:
    archive = re.search(r"creating vzdump archive '([^']+)'", stderr)
    size = re.search(r"archive file size: (\S+)", stderr)
    failure = re.search(r"ERROR: Backup of VM \d+ failed - (.+)", stderr)
    ok = "Backup job finished successfully" in stderr and failure is None
    return VzdumpRun(ok, archive.group(1) if archive else None, size.group(1) if size else None,
                     failure.group(1).strip() if failure else None)


def hint_for(reason: str, vmid: int, guest: str = "qemu") -> str | None:
    if "locked" in reason:
        tool = "pct" if guest == "lxc" else "qm"
        return f"If no backup of guest {vmid} is running, clear the stale lock: {tool} unlock {vmid}"
    if "No space" in reason or "space" in reason:
        return "Check the storage: pvesm status; prune old archives (bak prune --dry-run)."
    if "unable to find VM" in reason:
        return f"VM {vmid} does not exist on this node: check vzdump.vmid (qm list)."
    return "See the task log: /var/log/vzdump/ and the archive's .log file."


def host_test_argv(name: str, path: str) -> list[str] | None:
    """The compressor's own integrity test, run on the PVE host beside the archive."""
    if name.endswith(".zst"):
        return ["zstd", "-t", "-q", path]
    if name.endswith(".gz"):
        return ["gzip", "-t", path]
    return None


def staging_candidates(status: dict[str, dict], preferred: str) -> list[tuple[str, int]]:
    """(storage, free bytes) of the active file storages for backups: the target's own first, then most free."""
    rows = [(name, row["available"]) for name, row in status.items()
            if row["status"] == "active" and row["type"] in FILE_STORAGE_TYPES]
    return sorted(rows, key=lambda row: (row[0] != preferred, -row[1]))


def stage_argv(path: str) -> list[str]:
    """Writes stdin to `path` on the PVE host; GNU dd reports on stderr how many bytes it wrote."""
    return ["dd", f"of={path}", "bs=1M"]


def parse_dd_bytes(stderr: str) -> int | None:
    """`N bytes (...) copied, ...` (GNU dd's summary): the bytes written."""
    match = re.search(r"^(\d+) bytes?\b.*copied", stderr, re.MULTILINE)
    return int(match.group(1)) if match else None


def stale_stages_argv(folders: list[str], target: str) -> list[str]:
    """Removes what a killed restore of `target` left in the dump folders (run under the target's lock)
    and prints what it removed."""
    return ["find", *folders, "-maxdepth", "1", "-type", "d", "-name", f"bak-restore-{target}.*",
            "-print", "-exec", "rm", "-rf", "--", "{}", "+"]


def parse_guest_list(text: str) -> dict[int, dict]:
    """`qm list` (VMID NAME STATUS ...) or `pct list` (VMID Status Lock Name) rows by VMID."""
    guests = {}
    lines = text.splitlines()
    pct = bool(lines) and lines[0].split()[1:2] == ["Status"]
    for line in lines[1:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            status = fields[1] if pct else fields[2]
            guests[int(fields[0])] = {"name": fields[-1] if pct else fields[1], "status": status}
    return guests


# --- the method --------------------------------------------------------------------------------
class Vzdump(Method):
    name = "vzdump"

    def _primary(self, target: Target, stores: list[Store]) -> Store:
        for store in stores:
            if store.kind == "proxmox" and store.storage == target.options["storage"]:
                return store
        raise BadInput(f"{target.name}: none of its destinations is the Proxmox storage {target.options['storage']!r}",
                       where=f"targets.{target.name}.destinations",
                       hint="Add a destination of kind proxmox with that storage on the PVE host.")

    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        options = target.options
        primary = self._primary(target, stores)
        others = [s for s in stores if s is not primary]
        previous = scan(primary, target).backups
        free = primary.usage().free
        if previous and free < previous[0].size:
            raise NoSpace(f"storage {primary.storage} has {free} bytes free; the last archive of VM {options['vmid']} "
                          f"was {previous[0].size}", where=primary.name, hint="pvesm status; prune old archives first.")
        runner = ctx.hosts.runner(target.host)
        started = time.monotonic()
        ctx.progress(f"{target.name}: vzdump {options['vmid']} to {options['storage']}")
        out = runner.run(vzdump_argv(options), check=False, timeout=target.timeout.total_seconds(),
                         on_stderr_line=lambda line: ctx.progress(line) if "%" in line or "ERROR" in line else None)
        run = parse_vzdump(out.stderr_text)
        if out.returncode != 0 or not run.ok:
            reason = run.reason or (out.stderr_text.strip().splitlines()[-1] if out.stderr_text.strip() else "unknown")
            raise CommandFailed(f"vzdump of VM {options['vmid']} failed: {reason}", returncode=out.returncode,
                                stderr_tail=out.stderr_text[-2000:], where=target.name,
                                code="vzdump_locked" if "locked" in reason else "vzdump_failed",
                                hint=hint_for(reason, options["vmid"], options.get("guest", "qemu")))
        name = run.archive.rsplit("/", 1)[-1]
        size = next((b.size for b in scan(primary, target).backups if b.name == name), None)
        copies = [{"store": primary.name, "location": primary.location("", name), "ok": True, "error": None}]
        sha256 = None
        if others:
            ctx.progress(f"{target.name}: copying {name} to {', '.join(s.name for s in others)}")
            fan = FanOut(others, folder_of(target), name)
            try:
                with primary.open_read("", name) as raw:
                    while chunk := raw.read(CHUNK):
                        fan.write(chunk)
            except BaseException:
                fan.abort()
                raise
            written = fan.commit()
            sha256 = written.sha256
            copies += [{"store": c.store, "location": c.location, "ok": c.ok, "error": c.error} for c in written.copies]
            if not written.ok:
                op.status = "partial"
        op.bytes, op.checksum = size, sha256
        return {"target": target.name, "name": name, "size": size, "sha256": sha256,
                "duration_s": round(time.monotonic() - started, 3), "copies": copies}

    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """On the PVE storage: the compressor's test there plus the archive's head (VMA header, or the
        tar's pct.conf). A copy: sha256, decompression and the whole archive (every VMA extent and
        cluster, or every tar member) in one streamed read."""
        result = {"store": store.name, "name": backup.name, "size": backup.size, "sha256": None,
                  "checksum": "missing", "format": None}
        deep = store.kind != "proxmox"
        try:
            test = host_test_argv(backup.name, store.path_of("", backup.name)) if not deep else None
            if test:
                tested = ctx.hosts.runner(store.host_name).run(test, check=False)
                if tested.returncode != 0:
                    raise VerifyFailed(f"{test[0]} -t: " + (tested.stderr_text.strip().splitlines() or ["failed"])[-1])
            with store.open_read(backup.folder, backup.name) as raw:
                reader = HashingReader(raw)
                stream = Decompressed(backup.name, reader)
                found = check_archive(backup.name, stream, deep)
                if deep:
                    while stream.read(CHUNK):
                        pass
                    reader.drain()
            result.update(format="ok", **found)
        except VerifyFailed as exc:
            result["format"] = "failed"
            raise VerifyFailed(f"{backup.name} on {store.name}: {exc.message}", where=f"{store.name}:{backup.name}",
                               details={"result": result}) from None
        if deep:
            result["sha256"] = reader.hash.hexdigest()
            expected = recorded_sha256(store, backup)
            result["checksum"] = "missing" if expected is None else ("ok" if expected == result["sha256"] else "mismatch")
            if result["checksum"] != "ok":
                raise VerifyFailed(f"{backup.name} on {store.name}: sha256 {result['checksum']}",
                                   where=f"{store.name}:{backup.name}", details={"result": result})
        else:
            result["checksum"] = "ok"  # vzdump writes no sidecar there; the compressor's test checked its checksums
        return result

    def _guests(self, runner) -> dict[int, dict]:
        guests = parse_guest_list(runner.run(["qm", "list"]).stdout_text)
        listing = runner.run(["pct", "list"], check=False)
        if listing.returncode == 0:
            guests.update(parse_guest_list(listing.stdout_text))
        return guests

    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        """From the Proxmox storage by volume ID; from a copy, through a staged file on the PVE host."""
        runner = ctx.hosts.runner(target.host)
        guests = self._guests(runner)
        if into:
            if not into.isdigit():
                raise BadInput(f"--into {into!r} must be a VMID", where="--into")
            vmid = int(into)
        else:
            low, high = target.options.get("restore_vmid_range") or DEFAULT_RESTORE_RANGE
            vmid = next((v for v in range(low, high + 1) if v not in guests), None)
            if vmid is None:
                raise Refused(f"no free VMID in {low}-{high}", where="restore_vmid_range", code="no_free_vmid")
        exists = vmid in guests
        if exists and not force:
            raise Refused(f"VM {vmid} exists ({guests[vmid]['name']}); restore never overwrites", where="--into",
                          code="would_overwrite", hint="Omit --into to restore to a free VMID, or pass --force.")
        if exists and guests[vmid]["status"] == "running":
            raise Refused(f"VM {vmid} is running; bak never restores over a running guest", where="--into",
                          code="guest_running", hint=f"Stop it first (qm shutdown {vmid}), or restore to a new VMID.")
        started = time.monotonic()
        result = {"target": target.name, "backup": backup.name, "store": store.name, "vmid": vmid, "replaced": exists}

        def restore_from(archive: str) -> None:
            runner.run(restore_argv(guest_of(backup.name), archive, vmid, storage=target.options.get("restore_storage"),
                                    force=exists), timeout=target.timeout.total_seconds())

        if store.kind == "proxmox":
            restore_from(store.volid(backup.name))
        else:
            with self._staged(ctx, target, store, backup, runner) as staged:
                result["staged"] = staged
                restore_from(staged["path"])
        result["duration_s"] = round(time.monotonic() - started, 3)
        return result

    @contextmanager
    def _staged(self, ctx: Context, target: Target, store: Store, backup: Backup, runner: Runner) -> Iterator[dict]:
        """The copy streamed into a dump folder on the PVE host (the PVE storage may be gone), its
        sha256 computed as it streams and checked once every byte has arrived; the staged file is
        removed afterwards, whatever happened."""
        expected = recorded_sha256(store, backup)
        if expected is None:
            raise Refused(f"{backup.name} on {store.name} has no .sha256 sidecar: bak restores no bytes it cannot check",
                          where=f"{store.name}:{backup.name}", code="no_checksum",
                          hint="Restore from another copy, or check the file by hand and restore it with qmrestore/pct.")
        storage, dump = self._staging_folder(target, backup, runner)
        folder = runner.run(["mktemp", "-d", "-p", dump, f"bak-restore-{target.name}.XXXXXXXX"]).stdout_text.strip()
        staged = {"storage": storage, "path": posixpath.join(folder, backup.name), "bytes": 0, "sha256": None,
                  "transfer_s": 0.0, "removed": False}
        try:
            ctx.progress(f"{target.name}: streaming {backup.name} from {store.name} to {storage} on {target.host}")
            started = time.monotonic()
            with store.open_read(backup.folder, backup.name) as raw:
                reader = FeederReader(raw)
                written = runner.run(stage_argv(staged["path"]), stdin=reader)
            if reader.error:
                raise reader.error if isinstance(reader.error, BakError) else TransportError(
                    f"reading {backup.name} from {store.name} failed: {reader.error}", where=store.name)
            arrived = parse_dd_bytes(written.stderr_text)
            staged.update(bytes=arrived, sha256=reader.hash.hexdigest(), transfer_s=round(time.monotonic() - started, 3))
            if arrived != reader.size or staged["sha256"] != expected:
                raise VerifyFailed(f"{backup.name} from {store.name}: {arrived} bytes arrived on {target.host} with "
                                   f"sha256 {staged['sha256'][:16]}..., the sidecar says {expected[:16]}... "
                                   f"({reader.size} bytes read); nothing restored", where=f"{store.name}:{backup.name}",
                                   code="copy_corrupt", hint="Verify the copies (bak verify --all-backups) and restore from a good one.")
            yield staged
        finally:
            try:
                staged["removed"] = runner.run(["rm", "-rf", "--", folder], check=False).returncode == 0
            except BakError:  # the connection is gone: the next restore of this target removes the folder
                staged["removed"] = False
            if not staged["removed"]:
                ctx.warnings.append(f"could not remove the staged copy {folder} on {target.host}; remove it by hand")

    def _staging_folder(self, target: Target, backup: Backup, runner: Runner) -> tuple[str, str]:
        """(storage, dump folder) with room for the copy, checked before a byte moves; the target's storage first."""
        status = ["pvesm", "status", "--content", "backup"]
        candidates = staging_candidates(parse_pvesm_status(runner.run(status).stdout_text), target.options["storage"])
        dumps = {name: posixpath.dirname(runner.run(["pvesm", "path", f"{name}:backup/{backup.name}"]).stdout_text.strip())
                 for name, _ in candidates}
        if dumps and runner.run(stale_stages_argv(list(dumps.values()), target.name), check=False).stdout_text.strip():
            candidates = staging_candidates(parse_pvesm_status(runner.run(status).stdout_text), target.options["storage"])
        roomy = [name for name, free in candidates if free >= backup.size and name in dumps]
        if not roomy:
            free = ", ".join(f"{name}: {free} bytes free" for name, free in candidates) or "no active file storage for backups"
            raise NoSpace(f"no Proxmox storage on {target.host} has room for {backup.name} ({backup.size} bytes); {free}",
                          where=target.host, hint="Free space on a backup storage (pvesm status; bak prune --dry-run), then run again.")
        return roomy[0], dumps[roomy[0]]

    def drill(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        restored = self.restore(ctx, target, store, backup, into=None, force=False, options={})
        runner = ctx.hosts.runner(target.host)
        vmid = restored["vmid"]
        result = {"target": target.name, "backup": backup.name, "store": store.name, "scratch_vmid": vmid,
                  "restore_duration_s": restored["duration_s"], "checks": []}
        try:
            listed = vmid in self._guests(runner)
            result["checks"].append({"check": f"VM {vmid} listed after restore", "ok": listed})
        finally:
            destroy = ["pct", "destroy", str(vmid)] if guest_of(backup.name) == "lxc" else ["qm", "destroy", str(vmid)]
            runner.run(destroy, check=False)
        result["passed"] = listed
        if not listed:
            raise VerifyFailed(f"drill of {backup.name}: VM {vmid} did not appear after restore", where=target.name,
                               code="drill_failed", details={"result": result})
        return result


class FeederReader(HashingReader):
    """A HashingReader read by a runner's stdin-feeding thread: a read error ends the stream (the
    remote process sees end of input) and is kept, to be raised in the caller's thread."""

    error: BaseException | None = None

    def read(self, n: int = CHUNK) -> bytes:
        try:
            return super().read(n)
        except Exception as exc:
            self.error = exc
            return b""


# --- archive formats ---------------------------------------------------------------------------
class Decompressed:
    """The archive's bytes as vzdump wrote them before compressing (.zst, .gz or none); a
    decompression error becomes a VerifyFailed that names the compressor."""

    def __init__(self, name: str, raw: BinaryIO):
        if name.endswith(".zst"):
            import zstandard

            self.tool, self.errors = "zstd", (zstandard.ZstdError,)
            self.stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        elif name.endswith(".gz"):
            import gzip
            import zlib

            self.tool, self.errors = "gzip", (gzip.BadGzipFile, EOFError, zlib.error)
            self.stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif name.endswith(".lzo"):
            raise VerifyFailed("lzo archives cannot be decompressed by bak; set compress: zstd for new backups")
        else:
            self.tool, self.errors, self.stream = "read", (), raw

    def read(self, size: int = CHUNK) -> bytes:
        try:
            return self.stream.read(size)
        except self.errors as exc:
            raise VerifyFailed(f"{self.tool}: {exc}") from None


def check_archive(name: str, stream: BinaryIO, whole: bool) -> dict:
    """The format's own check: the VMA header (and, whole, every extent and cluster), or the
    container tar's pct.conf (and, whole, every member). Returns the verify row's format fields."""
    from bak import lxc, vma

    if guest_of(name) == "lxc":
        archive = lxc.read(stream, full=whole)
        return {"configs": ["pct.conf"], "members": archive.members}
    info = vma.read(stream, walk_extents=whole)
    return {"configs": sorted(info.configs), "devices": [d["name"] for d in info.devices.values()],
            "extents": info.extents}
