"""Proxmox VMs and containers: vzdump on the PVE host, copies streamed to other destinations,
VMA and container-tar verification, restore to a new VMID (from the Proxmox storage or straight
from a copy), restore drills."""

from __future__ import annotations

import collections
import json
import posixpath
import re
import shlex
import time
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from bak.catalog import Backup, folder_of, scan
from bak.config import Target
from bak.errors import BadInput, BakError, CommandFailed, NoSpace, Refused, TransportError, VerifyFailed
from bak.journal import Operation
from bak.methods.base import Context, Method
from bak.interrupts import sigterm_raises
from bak.run.base import CHUNK, Runner, tail_text
from bak.stores import Store
from bak.stores.fanout import FanOut
from bak.stores.proxmox import parse_pvesm_status
from bak.verify import HashingReader, recorded_sha256

# Storage types whose backups are files in a dump/ folder (PBS keeps its own chunk store).
FILE_STORAGE_TYPES = ("dir", "nfs", "cifs", "cephfs", "glusterfs", "btrfs")


# --- argv builders and parsers (pure) --------------------------------------------------------
def vzdump_argv(options: dict) -> list[str]:
    """`--prune-backups keep-all=1`: vzdump prunes by the storage's retention after each backup unless told
    otherwise (pve-manager VZDump.pm new(): the storage's prune-backups, `remove` defaults to 1); bak's
    policy and journal are the only prune. keep-all also sets remove=0 without tripping vzdump's
    max-backup check, which `--remove 0` alone does on a storage with retention."""
    argv = ["vzdump", str(options["vmid"]), "--mode", options["mode"], "--compress", options["compress"],
            "--storage", options["storage"], "--prune-backups", "keep-all=1"]
    if options.get("zstd_threads") is not None:  # 0 is vzdump's own "half the cores"
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


_FORMAT_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(KB|MB|GB|TB)$")
_FORMAT_UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_format_size(text: str) -> int | None:
    """vzdump's `archive file size: 2.50GB` (pve-manager VZDump.pm format_size: binary units, KB and MB
    truncated to integers, GB and TB with two decimals): the bytes it stands for, to its precision."""
    match = _FORMAT_SIZE.match(text)
    return round(float(match.group(1)) * _FORMAT_UNITS[match.group(2)]) if match else None


class VzdumpLog:
    """vzdump's task log read as it streams (stdout and stderr joined): the archive it creates, the size it
    prints, each guest's failure, whether the job said it finished; progress lines go to `progress`. Keeps
    the last lines only, however long the backup runs."""

    _ARCHIVE = re.compile(r"creating vzdump archive '([^']+)'")
    _SIZE = re.compile(r"archive file size: (\S+)")
    _FAILED = re.compile(r"ERROR: Backup of VM \d+ failed - (.+)")
    _PROGRESS = re.compile(r"^INFO:\s+\d+% \(")
    TAIL_LINES = 40

    def __init__(self, progress=lambda line: None):
        self.progress = progress
        self.archive: str | None = None
        self.size_text: str | None = None
        self.failures: list[str] = []
        self.finished_ok = False
        self.other_archive: str | None = None  # "creating Proxmox Backup Server archive ...": not a file
        self.tail: collections.deque[str] = collections.deque(maxlen=self.TAIL_LINES)
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            self.line(line.decode("utf-8", "replace").rstrip("\r"))

    def close(self) -> None:
        if self._pending:
            self.line(self._pending.decode("utf-8", "replace"))
            self._pending = b""

    def line(self, text: str) -> None:
        if not text.strip():
            return
        self.tail.append(text)
        if match := self._ARCHIVE.search(text):
            self.archive = match.group(1)
        elif match := re.search(r"creating (.+) archive '([^']+)'", text):
            self.other_archive = f"{match.group(1)}: {match.group(2)}"
        if match := self._SIZE.search(text):
            self.size_text = match.group(1)
        if match := self._FAILED.search(text):
            self.failures.append(match.group(1).strip())
        if "Backup job finished successfully" in text:
            self.finished_ok = True
        if self._PROGRESS.match(text) or text.startswith("ERROR:"):
            self.progress(text)

    @property
    def ok(self) -> bool:
        return self.finished_ok and not self.failures and self.archive is not None

    @property
    def reason(self) -> str:
        """Why it failed: the guest's own reason, else the task's last words (its error on stderr)."""
        if self.failures:
            return self.failures[0]
        if self.finished_ok and self.archive is None:
            return self.other_archive and f"no archive file was made ({self.other_archive})" or "no archive was made"
        return self.tail[-1] if self.tail else "vzdump printed nothing"


def parse_vzdump(text: str) -> VzdumpLog:
    log = VzdumpLog()
    log.feed(text.encode())
    log.close()
    return log


def hint_for(reason: str, vmid: int, guest: str = "qemu") -> str | None:
    tool = "pct" if guest == "lxc" else "qm"
    if "is locked" in reason:
        return f"If no backup of guest {vmid} is running, clear the stale lock: {tool} unlock {vmid}"
    if "max backup limit" in reason:
        return "The storage's retention limits how many backups vzdump keeps; bak passes --prune-backups keep-all=1, " \
               "so this comes from an older vzdump: raise the storage's retention (pvesm set STORAGE --prune-backups ...)."
    if "No space" in reason or "space" in reason:
        return "Check the storage: pvesm status; prune old archives (bak prune --dry-run)."
    if "unable to find VM" in reason:
        return f"Guest {vmid} does not exist on this node: check vzdump.vmid ({tool} list)."
    return "See the task log: /var/log/vzdump/ and the archive's .log file."


def host_test_argv(name: str, path: str) -> list[str] | None:
    """The compressor's own integrity test, run on the PVE host beside the archive (Proxmox ships zstd,
    gzip, bzip2 and lzop for its archives: pve-storage Storage.pm decompressor_info)."""
    if name.endswith(".zst"):
        return ["zstd", "-t", "-q", path]
    if name.endswith((".gz", ".tgz")):
        return ["gzip", "-t", path]
    if name.endswith(".bz2"):
        return ["bzip2", "-t", path]
    if name.endswith(".lzo"):
        return ["lzop", "-t", path]
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
    """`qm list` (VMID NAME STATUS MEM(MB) BOOTDISK(GB) PID) or `pct list` (VMID Status Lock Name) rows by
    VMID. A VM without a name is listed as `VM 100` (qemu-server QemuServer.pm vmstatus): two words, so
    a qm row's name is what lies between the VMID and its last four columns."""
    guests = {}
    lines = text.splitlines()
    pct = bool(lines) and lines[0].split()[1:2] == ["Status"]
    for line in lines[1:]:
        fields = line.split()
        if pct and len(fields) >= 3 and fields[0].isdigit():
            guests[int(fields[0])] = {"name": fields[-1], "status": fields[1]}
        elif not pct and len(fields) >= 6 and fields[0].isdigit():
            guests[int(fields[0])] = {"name": " ".join(fields[1:-4]), "status": fields[-4]}
    return guests


def resources_argv() -> list[str]:
    """Every guest of the cluster: VMIDs are cluster-wide, `qm list` shows this node's only."""
    return ["pvesh", "get", "/cluster/resources", "--type", "vm", "--output-format", "json"]


def nextid_argv(vmid: int | None = None) -> list[str]:
    """Proxmox's next free VMID, or (with `vmid`) whether that one is free (pve-manager API2/Cluster.pm nextid)."""
    return ["pvesh", "get", "/cluster/nextid", *(["--vmid", str(vmid)] if vmid else []), "--output-format", "json"]


def parse_resources(text: str) -> dict[int, dict]:
    """`/cluster/resources --type vm` as {vmid: {name, status, node, type}}."""
    try:
        rows = json.loads(text or "[]")
    except ValueError:
        raise CommandFailed("pvesh get /cluster/resources printed no JSON", code="pvesh_output") from None
    return {int(r["vmid"]): {"name": r.get("name"), "status": r.get("status"), "node": r.get("node"), "type": r.get("type")}
            for r in rows if isinstance(r, dict) and str(r.get("vmid", "")).isdigit()}


def rootfs_storage(pct_conf: str) -> str | None:
    """The storage of a container's root file system, from its pct.conf (`rootfs: local-lvm:vm-200-disk-0,size=8G`)."""
    for line in pct_conf.splitlines():
        if line.startswith("rootfs:"):
            volume = line.split(":", 1)[1].strip().split(",", 1)[0]
            return volume.split(":", 1)[0] if ":" in volume else None
    return None


def parse_config(text: str) -> dict[str, str]:
    """`qm config` / `pct config` lines (`key: value`)."""
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def links_down(config: dict[str, str]) -> dict[str, str]:
    """Every network link of a guest config with `link_down=1`: a scratch copy must never meet the
    original's network (same addresses, same services)."""
    changed = {}
    for key, value in config.items():
        if re.fullmatch(r"net\d+", key):
            parts = [p for p in value.split(",") if not p.startswith("link_down=")]
            changed[key] = ",".join([*parts, "link_down=1"])
    return changed


def set_argv(tool: str, vmid: int, changes: dict[str, str]) -> list[str]:
    return [tool, "set", str(vmid), *[arg for key, value in sorted(changes.items()) for arg in (f"--{key}", value)]]


def probe_argv(guest: str, vmid: int) -> list[str]:
    """Answered once the guest is up: the QEMU guest agent's ping (`qm agent` is its old alias), a command in
    the container."""
    return ["pct", "exec", str(vmid), "--", "true"] if guest == "lxc" else ["qm", "guest", "cmd", str(vmid), "ping"]


def exec_argv(guest: str, vmid: int, command: list[str], timeout: int) -> list[str]:
    if guest == "lxc":
        return ["pct", "exec", str(vmid), "--", *command]
    return ["qm", "guest", "exec", str(vmid), "--timeout", str(timeout), "--", *command]


def parse_guest_exec(text: str) -> tuple[int | None, str, str]:
    """`qm guest exec`'s JSON (qemu-server qm.pm exec, print_agent_result): exit code (None while it still
    runs: only a pid came back), stdout, stderr."""
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        data = {}
    if not data.get("exited"):
        return None, "", ""
    return int(data.get("exitcode", -1)), data.get("out-data", ""), data.get("err-data", "")


# The keeper of a guest bak restores to a VMID it chose: started before the restore, it holds its stdin
# open until bak is done. When that ends (bak finished, failed, was interrupted or killed: the SSH
# connection closes), it stops the restore the wrapper below recorded, then, unless bak wrote `keep`,
# stops and destroys the guest with every volume of that VMID. It only touches a VMID the restore
# claimed (the wrapper's pid file); bak removes the claim when the restore found the VMID taken. It ignores
# SIGHUP and SIGPIPE: the connection that went with bak must not stop it before it has cleaned up.
KEEPER = r"""trap '' HUP PIPE
d=$(mktemp -d -t bak-scratch.XXXXXXXX) || exit 1
echo "$d"
cat > /dev/null
tool=$1 vmid=$2
if [ -s "$d/pid" ]; then
  pid=$(cat "$d/pid"); kill -TERM "$pid" 2>/dev/null; n=0
  while kill -0 "$pid" 2>/dev/null; do n=$((n+1)); [ $n -ge 60 ] && kill -KILL "$pid" 2>/dev/null; sleep 1; done
fi
if [ -e "$d/pid" ] && [ ! -e "$d/keep" ]; then
  n=0
  while "$tool" config "$vmid" > /dev/null 2>&1 && [ $n -lt 30 ]; do
    [ $n -gt 0 ] && sleep 2
    "$tool" unlock "$vmid" > /dev/null 2>&1
    if [ "$tool" = qm ]; then
      qm stop "$vmid" > /dev/null 2>&1
      qm destroy "$vmid" --purge 1 --destroy-unreferenced-disks 1 > /dev/null 2>&1
    else
      pct destroy "$vmid" --force 1 --purge 1 --destroy-unreferenced-disks 1 > /dev/null 2>&1
    fi
    n=$((n+1))
  done
  if "$tool" config "$vmid" > /dev/null 2>&1; then echo "left $vmid"; else echo "removed $vmid"; fi
fi
rm -rf "$d"
"""


def keeper_argv(guest: str, vmid: int) -> list[str]:
    return ["sh", "-c", KEEPER, "sh", "pct" if guest == "lxc" else "qm", str(vmid)]


def recorded_argv(pid_file: str, argv: list[str]) -> list[str]:
    """argv run with its pid written to `pid_file` first, for the keeper to stop it if bak cannot."""
    return ["sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh", pid_file, *argv]


# --- the method --------------------------------------------------------------------------------
class Vzdump(Method):
    name = "vzdump"
    boots = True

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
        log = VzdumpLog(ctx.progress)
        out = runner.run(vzdump_argv(options), check=False, timeout=target.timeout.total_seconds(), stdout=log.feed,
                         merge_stderr=True)
        log.close()
        if out.returncode != 0 or not log.ok:
            reason = log.reason
            raise CommandFailed(f"vzdump of VM {options['vmid']} failed: {reason}", returncode=out.returncode,
                                stderr_tail="\n".join(log.tail)[-2000:], where=target.name,
                                code="vzdump_locked" if "is locked" in reason else "vzdump_failed",
                                hint=hint_for(reason, options["vmid"], options.get("guest", "qemu")))
        run = log
        name = run.archive.rsplit("/", 1)[-1]
        size = next((b.size for b in scan(primary, target).backups if b.name == name), None)
        if size is None:  # the storage does not list it (yet): vzdump's own word, to its precision
            size = parse_format_size(run.size_text or "")
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

    def _cluster_guests(self, runner: Runner) -> dict[int, dict]:
        return parse_resources(runner.run(resources_argv()).stdout_text)

    def _free_vmid(self, runner: Runner, target: Target, guests: dict[int, dict]) -> int:
        """Inside `restore_vmid_range` the first VMID no guest of the cluster uses (checked again by Proxmox
        itself just before use); without a range, Proxmox's next free VMID."""
        configured = target.options.get("restore_vmid_range")
        if not configured:
            return int(json.loads(runner.run(nextid_argv()).stdout_text))
        low, high = configured
        for vmid in range(low, high + 1):
            if vmid not in guests and runner.run(nextid_argv(vmid), check=False).returncode == 0:
                return vmid
        raise Refused(f"no free VMID in {low}-{high} across the cluster", where=f"targets.{target.name}.vzdump.restore_vmid_range",
                      code="no_free_vmid", hint="Widen restore_vmid_range, or remove old restored guests.")

    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        """From the Proxmox storage by volume ID; from a copy, through a staged file on the PVE host. A
        restore to a new VMID is kept by a keeper: when it fails or bak is stopped, nothing is left there."""
        runner = ctx.hosts.runner(target.host)
        guests = self._cluster_guests(runner)
        if into:
            if not into.isdigit():
                raise BadInput(f"--into {into!r} must be a VMID", where="--into")
            vmid = int(into)
        else:
            vmid = self._free_vmid(runner, target, guests)
        exists = vmid in guests
        if exists and not force:
            raise Refused(f"VM {vmid} exists ({guests[vmid]['name']}); restore never overwrites", where="--into",
                          code="would_overwrite", hint="Omit --into to restore to a free VMID, or pass --force.")
        tool = "pct" if guest_of(backup.name) == "lxc" else "qm"
        if exists and runner.run([tool, "config", str(vmid)], check=False).returncode != 0:
            raise Refused(f"VM {vmid} is a {guests[vmid].get('type') or 'guest'} on node {guests[vmid].get('node')}, not a "
                          f"{tool} guest of {target.host}; bak restores over a guest of this node and kind only", where="--into", code="guest_elsewhere", hint="Omit --into to restore to a free VMID.")
        if exists and guests[vmid]["status"] == "running":
            raise Refused(f"VM {vmid} is running; bak never restores over a running guest", where="--into",
                          code="guest_running", hint=f"Stop it first (qm shutdown {vmid}), or restore to a new VMID.")
        started = time.monotonic()
        result = {"target": target.name, "backup": backup.name, "store": store.name, "vmid": vmid, "replaced": exists}
        if exists:  # over the guest the user named: Proxmox's own restore, no keeper
            self._restore_into(ctx, target, store, backup, runner, vmid, result, None)
        else:
            with self._kept(runner, guest_of(backup.name), vmid) as keeper:
                self._restore_into(ctx, target, store, backup, runner, vmid, result, keeper)
                keeper.keep()
        result["duration_s"] = round(time.monotonic() - started, 3)
        return result

    def _restore_into(self, ctx: Context, target: Target, store: Store, backup: Backup, runner: Runner, vmid: int,
                      result: dict, keeper: "Keeper | None") -> None:
        guest = guest_of(backup.name)
        storage = self._container_storage(target, store, backup, runner) if guest == "lxc" else \
            target.options.get("restore_storage")
        if storage:
            result["storage"] = storage

        def restore_from(archive: str) -> None:
            argv = restore_argv(guest, archive, vmid, storage=storage, force=result["replaced"])
            ctx.progress(f"{target.name}: {argv[0]} {' '.join(argv[1:3])}")
            out = runner.run(recorded_argv(keeper.pid_file, argv) if keeper else argv, check=False, merge_stderr=True,
                             timeout=target.timeout.total_seconds())
            if out.returncode != 0:
                said = tail_text(out.stdout, 20)
                if keeper and "already exists" in said:
                    keeper.disown()  # another restore took the VMID first: not ours to remove
                raise CommandFailed(f"{argv[0]} {'restore ' if guest == 'lxc' else ''}of {backup.name} to {vmid} failed: "
                                    f"{said.splitlines()[-1] if said else f'exit {out.returncode}'}",
                                    returncode=out.returncode, stderr_tail=said[-2000:], where=target.name,
                                    code="restore_failed", hint="See the lines above; nothing is left at the new VMID.")

        if store.kind == "proxmox":
            restore_from(store.volid(backup.name))
        else:
            with self._staged(ctx, target, store, backup, runner) as staged:
                result["staged"] = staged
                restore_from(staged["path"])

    def _container_storage(self, target: Target, store: Store, backup: Backup, runner: Runner) -> str:
        """Where `pct restore` puts every volume: without --storage it is `local`, which on a default install
        cannot hold container directories (pve-container API2/LXC.pm create_vm). The configured
        restore_storage, else the original rootfs storage from the archive's pct.conf, each checked against
        the storages that hold container directories."""
        able = [name for name, row in parse_pvesm_status(
            runner.run(["pvesm", "status", "--content", "rootdir"]).stdout_text).items() if row["status"] == "active"]
        listed = ", ".join(able) or "none"
        wanted = target.options.get("restore_storage")
        if wanted:
            if wanted not in able:
                raise BadInput(f"restore_storage {wanted!r} cannot hold container directories on {target.host} "
                               f"(storages that can: {listed})", where=f"targets.{target.name}.vzdump.restore_storage",
                               code="storage_not_rootdir", hint="Name a storage whose content includes rootdir "
                                                                "(pvesm status --content rootdir).")
            return wanted
        from bak import lxc

        with store.open_read(backup.folder, backup.name) as raw:
            original = rootfs_storage(lxc.read(Decompressed(backup.name, raw), full=False).config)
        if original in able:
            return original
        raise Refused(f"the container's original storage {original!r} cannot hold container directories on "
                      f"{target.host} (storages that can: {listed})", where=f"targets.{target.name}.vzdump.restore_storage",
                      code="storage_not_rootdir", hint="Set vzdump.restore_storage to one of them.")

    @contextmanager
    def _kept(self, runner: Runner, guest: str, vmid: int) -> Iterator["Keeper"]:
        with sigterm_raises(), runner.held(keeper_argv(guest, vmid)) as held:
            if not held.line.startswith("/"):
                raise CommandFailed(f"could not start the keeper of VMID {vmid} on {runner.host_name}",
                                    where=runner.host_name)
            keeper = Keeper(runner, held.line, vmid)
            yield keeper
        keeper.outcome = held.output.strip()

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
        """Restore to a scratch VMID (a new MAC for every link), check Proxmox lists it; with boot_drill
        (`bak drill --boot`) also start it with every link down, wait for the guest agent (a command in a
        container) up to boot_timeout and run boot_check inside. The keeper removes the scratch guest in
        every case: failure, Ctrl-C, SIGTERM, a killed bak."""
        runner = ctx.hosts.runner(target.host)
        guest = guest_of(backup.name)
        vmid = self._free_vmid(runner, target, self._cluster_guests(runner))
        result = {"target": target.name, "backup": backup.name, "store": store.name, "scratch_vmid": vmid,
                  "restore_duration_s": None, "checks": [], "boot": None}
        failure: BakError | None = None
        with self._kept(runner, guest, vmid) as keeper:
            started = time.monotonic()
            self._restore_into(ctx, target, store, backup, runner, vmid, {"replaced": False}, keeper)
            result["restore_duration_s"] = round(time.monotonic() - started, 3)
            listed = vmid in self._cluster_guests(runner)
            result["checks"].append({"check": f"guest {vmid} listed after restore", "ok": listed})
            if listed and target.options.get("boot_drill"):
                try:
                    result["boot"] = self._boot(ctx, target, runner, guest, vmid)
                except VerifyFailed as exc:
                    failure, result["boot"] = exc, exc.details.get("boot")
                result["checks"].append({"check": f"guest {vmid} booted", "ok": failure is None})
                if result["boot"] and result["boot"].get("check"):
                    result["checks"].append({"check": "boot_check inside the guest", "ok": result["boot"]["check"]["ok"]})
            ctx.progress(f"{target.name}: removing scratch guest {vmid}")
        result["scratch_removed"] = keeper.outcome == f"removed {vmid}" and vmid not in self._cluster_guests(runner)
        if not result["scratch_removed"]:
            ctx.warnings.append(f"scratch guest {vmid} on {target.host} could not be removed ({keeper.outcome or 'no answer'}): "
                                f"remove it by hand ({'pct' if guest == 'lxc' else 'qm'} destroy {vmid} --purge 1)")
        result["passed"] = all(check["ok"] for check in result["checks"])
        if failure is not None:
            raise VerifyFailed(f"boot drill of {backup.name}: {failure.message}", where=target.name, code=failure.code,
                               hint=failure.hint, details={"result": result})
        if not result["passed"]:
            raise VerifyFailed(f"drill of {backup.name}: guest {vmid} did not appear after restore", where=target.name,
                               code="drill_failed", details={"result": result})
        return result

    def _boot(self, ctx: Context, target: Target, runner: Runner, guest: str, vmid: int) -> dict:
        """Start the scratch guest, links down, and wait until it answers; then boot_check. Raises
        VerifyFailed (boot_failed, boot_no_agent, boot_timeout, boot_check_failed) with the boot row."""
        tool = "pct" if guest == "lxc" else "qm"
        boot = {"links_down": [], "boot_s": None, "answered": False, "check": None}

        def failed(code: str, message: str, hint: str | None = None) -> VerifyFailed:
            return VerifyFailed(message, where=target.name, code=code, hint=hint, details={"boot": boot})

        changes = links_down(parse_config(runner.run([tool, "config", str(vmid)]).stdout_text))
        if changes:
            runner.run(set_argv(tool, vmid, changes))
            boot["links_down"] = sorted(changes)
        limit = int(target.options.get("boot_timeout", 300))
        ctx.progress(f"{target.name}: starting scratch guest {vmid} (links down), waiting up to {limit}s")
        started = time.monotonic()
        out = runner.run([tool, "start", str(vmid)], check=False, merge_stderr=True)
        if out.returncode != 0:
            raise failed("boot_failed", f"{tool} start {vmid} failed: {last_line(out.stdout)}")
        while True:
            left = limit - (time.monotonic() - started)
            probe = runner.run(probe_argv(guest, vmid), check=False, merge_stderr=True, timeout=max(10.0, left + 10))
            said = last_line(probe.stdout)
            if probe.returncode == 0:
                break
            if "No QEMU guest agent configured" in said:
                raise failed("boot_no_agent", f"guest {vmid} has no QEMU guest agent configured: bak cannot tell "
                             "whether it booted", hint=f"Enable it on the original (qm set {target.options['vmid']} "
                             "--agent enabled=1) and install qemu-guest-agent inside, then back up again.")
            if f"VM {vmid} is not running" in said or "not running!" in said:
                raise failed("boot_failed", f"guest {vmid} stopped while booting: {said}")
            if time.monotonic() - started >= limit:
                raise failed("boot_timeout", f"guest {vmid} did not answer within {limit}s (boot_timeout): {said}",
                             hint="Look at the original's console and boot log; raise vzdump.boot_timeout for a slow guest.")
            time.sleep(min(2.0, max(0.0, left)))
        boot.update(answered=True, boot_s=round(time.monotonic() - started, 3))
        check = target.options.get("boot_check")
        if check:
            boot["check"] = self._boot_check(runner, guest, vmid, check, limit)
            if not boot["check"]["ok"]:
                raise failed("boot_check_failed", f"boot_check {shlex.join(check['command'])} in guest {vmid}: "
                             f"{boot['check']['problem']}", hint="Run the command in the original guest and compare.")
        return boot

    def _boot_check(self, runner: Runner, guest: str, vmid: int, check: dict, limit: int) -> dict:
        out = runner.run(exec_argv(guest, vmid, check["command"], limit), check=False, timeout=limit + 30)
        if guest == "lxc":
            code, stdout = out.returncode, out.stdout_text
        elif out.returncode != 0:
            code, stdout = None, ""
        else:
            code, stdout, _ = parse_guest_exec(out.stdout_text)
        row = {"command": check["command"], "exit_code": code, "output": stdout[:500], "ok": False, "problem": None}
        expected = check.get("exit_code", 0)
        if code is None:
            row["problem"] = last_line(out.stdout + out.stderr) or "no result"
        elif code != expected:
            row["problem"] = f"exit code {code}, expected {expected}"
        elif "output" in check and stdout.strip() != check["output"].strip():
            row["problem"] = f"printed {stdout.strip()[:200]!r}, expected {check['output'].strip()[:200]!r}"
        else:
            row["ok"] = True
        return row


class Keeper:
    """bak's side of KEEPER: its folder, the restore's pid file in it, keep and disown."""

    def __init__(self, runner: Runner, folder: str, vmid: int):
        self.runner, self.folder, self.vmid = runner, folder, vmid
        self.pid_file = posixpath.join(folder, "pid")
        self.outcome = ""

    def keep(self) -> None:
        """The guest restored is the user's now: the keeper leaves it."""
        self.runner.run(["touch", "--", posixpath.join(self.folder, "keep")])

    def disown(self) -> None:
        self.runner.run(["rm", "-f", "--", self.pid_file], check=False)


def last_line(data: bytes) -> str:
    text = tail_text(data, 1)
    return text.splitlines()[-1] if text else ""


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
    """The archive's bytes as vzdump wrote them before compressing (.zst, .gz/.tgz, .bz2 or none); a
    decompression error becomes a VerifyFailed that names the compressor. An .lzo archive is checked on
    the PVE host only (lzop -t): Python has no maintained lzop reader."""

    def __init__(self, name: str, raw: BinaryIO):
        if name.endswith(".zst"):
            import zstandard

            self.tool, self.errors = "zstd", (zstandard.ZstdError,)
            self.stream = ZstdFrames(raw)
        elif name.endswith((".gz", ".tgz")):
            import gzip
            import zlib

            self.tool, self.errors = "gzip", (gzip.BadGzipFile, EOFError, zlib.error)
            self.stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif name.endswith(".bz2"):
            import bz2

            self.tool, self.errors = "bzip2", (OSError, EOFError, ValueError)
            self.stream = bz2.BZ2File(raw, mode="rb")
        elif name.endswith(".lzo"):
            raise VerifyFailed("an lzo copy cannot be checked away from the PVE host (no lzop reader here); "
                               "set compress: zstd for new backups")
        else:
            self.tool, self.errors, self.stream = "read", (), raw

    def read(self, size: int = CHUNK) -> bytes:
        try:
            return self.stream.read(size)
        except self.errors as exc:
            raise VerifyFailed(f"{self.tool}: {exc}") from None


class ZstdFrames:
    """zstd frames one after another, decompressed by python-zstandard's stream reader (bounded output), the
    compressed bytes walked on their way in (RFC 8878: frame header, block headers, checksum): an input that
    ends inside a frame (its data, or the 4 checksum bytes the zstd CLI writes) is an error, which the stream
    reader alone does not report."""

    def __init__(self, raw: BinaryIO):
        import zstandard

        self.walk = ZstdWalk(raw)
        self.stream = zstandard.ZstdDecompressor().stream_reader(self.walk, read_across_frames=True)

    def read(self, size: int = CHUNK) -> bytes:
        data = self.stream.read(size)
        if not data:
            self.walk.read(1)  # drain: the reader may stop before the last bytes (the checksum)
            if not self.walk.at_boundary:
                import zstandard

                raise zstandard.ZstdError(f"truncated archive: the input ends inside a zstd frame "
                                          f"(at byte {self.walk.offset})")
        return data


class ZstdWalk:
    """Passes bytes through while following zstd's frame layout, to tell whether the input ended between frames."""

    MAGIC, SKIPPABLE = 0xFD2FB528, 0x184D2A50

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.offset = 0
        self.pending = b""           # header bytes not parsed yet
        self.skip = 0                # content bytes to pass before the next header
        self.state = "magic"         # what the pending bytes are: magic, frame_header, skippable_size, block, checksum
        self.checksum = False
        self.frames = 0

    @property
    def at_boundary(self) -> bool:
        return self.frames > 0 and self.state == "magic" and not self.pending and not self.skip

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(CHUNK if size is None or size < 0 else size)
        view, position = memoryview(data), 0
        while position < len(data):
            if self.skip:
                step = min(self.skip, len(data) - position)
                self.skip -= step
                position += step
                continue
            need = self._need()
            take = min(need - len(self.pending), len(data) - position)
            self.pending += bytes(view[position:position + take])
            position += take
            if len(self.pending) == need:
                self._parse()
        self.offset += len(data)
        return data

    _FIXED = {"magic": 4, "skippable_size": 4, "checksum": 4, "block": 3, "frame_header": 1}

    def _need(self) -> int:
        """How many header bytes the current state parses at once; a frame header's length is told by its
        first byte, the descriptor (window byte unless single-segment, dictionary id, content size)."""
        if self.state != "frame_header" or not self.pending:
            return self._FIXED[self.state]
        descriptor = self.pending[0]
        fcs_flag, single = descriptor >> 6, descriptor >> 5 & 1
        content_size = (1 if single else 0) if fcs_flag == 0 else (2, 4, 8)[fcs_flag - 1]
        return 1 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size

    def _parse(self) -> None:
        if self.state == "frame_header" and len(self.pending) == 1:
            return  # the descriptor: the rest of the header follows (at least its window or content size)
        value, self.pending = self.pending, b""
        if self.state == "magic":
            magic = int.from_bytes(value, "little")
            if magic == self.MAGIC:
                self.state = "frame_header"
            elif magic & 0xFFFFFFF0 == self.SKIPPABLE:
                self.state = "skippable_size"
            else:
                self.state, self.skip = "garbage", 1 << 62  # not zstd: the stream reader says what is wrong
        elif self.state == "frame_header":
            self.checksum, self.state = bool(value[0] >> 2 & 1), "block"
        elif self.state == "skippable_size":
            self.skip, self.state = int.from_bytes(value, "little"), "magic"
            self.frames += 1
        elif self.state == "block":
            header = int.from_bytes(value, "little")
            last, kind, size = header & 1, header >> 1 & 3, header >> 3
            self.skip = 1 if kind == 1 else size  # an RLE block stores its one byte
            if last:
                self.state = "checksum" if self.checksum else "magic"
                self.frames += 0 if self.checksum else 1
        elif self.state == "checksum":
            self.state = "magic"
            self.frames += 1


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
