"""Shared by the stand-in Proxmox VE commands (tests only; Proxmox cannot run here).

Every behaviour names the Proxmox source it reproduces (read from the repositories pve-manager,
pve-common, pve-storage, pve-container, qemu-server, pve-guest-common, pve-cluster: file and function);
a behaviour no source shows is marked GUESS. State: $BAK_PVE_ROOT/state.json; every call is logged to
calls.log.

How a Proxmox command reports (pve-common src/PVE/RESTEnvironment.pm fork_worker and tee_worker,
src/PVE/CLIHandler.pm run_cli_handler): a command that runs as a task (vzdump, qmrestore, pct restore,
qm start/stop/destroy, pct start/destroy, pvesm free) forks a worker whose STDERR is joined to its
STDOUT; the caller reads every line of the task (INFO:, WARN:, ERROR: lines, progress) on its STDOUT.
When the worker dies, tee_worker prints the error message alone (no "TASK ERROR: " prefix, which only
the task log gets) on STDERR; the exit code is the command's own choice: vzdump, qm and pct
(upid_exit) exit 255 on a failed task, `pvesm free` (no result handler) exits 0 whatever happened. A
failure before the worker is forked (a parameter check, a missing config) is a plain Perl die: the
message on STDERR, exit 255 (or errno, e.g. 2 for a missing config file).

Guests have real bytes: a VM's disks are sparse image files under $BAK_PVE_ROOT/images, a
container's root file system is a folder under $BAK_PVE_ROOT/ct. Archives are written the way
Proxmox writes them:
- VMA as pve-qemu's vma-writer.c does: the header md5 over header_size bytes with its md5 field
  zeroed; config names NUL-terminated and config data not; extents of at most 58 clusters (the writer
  flushes before using the 59th slot), each extent's md5 over its 512-byte header alone, then the
  non-zero 4 KiB blocks of its clusters in block-info order; an all-zero cluster is mask 0 with no
  data; clusters in the order QEMU's backup job hands them over (see backup_order), piped through
  the zstd command as vzdump does.
- LXC as pve-container's VZDump/LXC.pm does: GNU tar with Proxmox's common tar flags, the
  `./etc/vzdump/pct.conf` first, then the root file system, piped through zstd.
What they write is read back by other implementations in the tests (dissect.archive, tarfile, GNU tar).

The guest's operating system is not Proxmox and has no source here: what a guest does once started
(whether it boots, runs the QEMU guest agent, answers a command) is a MODEL (see guest_os), kept in the
guest's own bytes so that it travels through a backup and a restore like the guest's data does.
"""

import fcntl
import hashlib
import json
import os
import random
import re
import shlex
import struct
import subprocess
import sys
import time
import uuid as uuidlib
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

ROOT = Path(os.environ["BAK_PVE_ROOT"])
STATE = ROOT / "state.json"
IMAGES = ROOT / "images"
CONTAINERS = ROOT / "ct"
# pve-storage src/PVE/Storage.pm: $BACKUP_EXT_RE_2 = \.(tgz|(?:tar|vma)(?:\.(gz|lzo|zst|bz2))?) (COMPRESSOR_RE of
# Plugin.pm KNOWN_COMPRESSION_FORMATS); archive_info: a standard name has a VMID of [1-9][0-9]{2,8} and the time.
NAME_RE = re.compile(r"^vzdump-(qemu|lxc)-([1-9][0-9]{2,8})-(\d{4})_(\d\d)_(\d\d)-(\d\d)_(\d\d)_(\d\d)"
                     r"\.(tgz|(?:vma|tar)(?:\.(?:gz|lzo|zst|bz2))?)$")
CLUSTER = 65536
BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)
CLUSTERS_PER_EXTENT = 58  # vma_writer_get_buffer flushes once 58 of the 59 slots are used
# PVE::Storage::Plugin::COMMON_TAR_FLAGS, which vzdump and pct restore both pass to tar.
COMMON_TAR_FLAGS = ["--one-file-system", "-p", "--sparse", "--numeric-owner", "--acls", "--xattrs",
                    "--xattrs-include=user.*", "--xattrs-include=security.capability",
                    "--warning=no-file-ignored", "--warning=no-xattr-write"]
# A default install's storage.cfg: `local` (dir) holds iso,vztmpl,backup; `local-lvm` holds images,rootdir
# (pve-manager's installer; a storage without `content` in our state is taken as `local` is).
DEFAULT_CONTENT = ["backup", "iso", "vztmpl"]


def load():
    return json.loads(STATE.read_text())


def save(state):
    """Atomically: a reader never sees half a state (pmxcfs writes a config file whole, too)."""
    temp = STATE.with_name(f"state.json.{os.getpid()}")
    temp.write_text(json.dumps(state, indent=1))
    os.replace(temp, STATE)


@contextmanager
def locked():
    """The state, changed by one command at a time (Proxmox's lock_config / cfs locks serialise the
    real changes); the change is saved when the block ends without an error."""
    with open(ROOT / "state.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state = load()
        yield state
        save(state)


def log_call(name, args):
    with open(ROOT / "calls.log", "a") as handle:
        handle.write(" ".join([name, *args]) + "\n")


def die(message, code=255):
    """A Perl die outside a task worker: the message on STDERR, exit 255 (errno when set, e.g. 2 for a
    missing config file; perlfunc die)."""
    sys.stdout.flush()
    print(message, file=sys.stderr)
    sys.exit(code)


def task_failed(message, exit_code=255):
    """A task worker died (RESTEnvironment.pm fork_worker): tee_worker prints the message alone on
    STDERR after the task's output on STDOUT; qm/pct/vzdump exit -1 (255) through upid_exit, `pvesm free`
    exits 0 (CLIHandler.pm run_cli_handler, no result handler)."""
    die(" ".join(message.split("\n")), exit_code)  # fork_worker: $err =~ s/\n/ /mg


def options(args):
    """`--key value` pairs of a PVE command line (PVE::JSONSchema::get_options), the rest positional."""
    positional, found, index = [], {}, 0
    while index < len(args):
        if args[index] == "--":
            found["extra-args"] = args[index + 1:]
            break
        if args[index].startswith("--"):
            found[args[index][2:]] = args[index + 1] if index + 1 < len(args) else ""
            index += 2
        else:
            positional.append(args[index])
            index += 1
    return positional, found


def config_missing(state, vmid, kind):
    """PVE::AbstractConfig::load_config: die "Configuration file '$cfspath' does not exist" (errno ENOENT: exit 2)."""
    folder = "qemu-server" if kind == "qemu" else "lxc"
    die(f"Configuration file 'nodes/{state['node']}/{folder}/{vmid}.conf' does not exist", 2)


def guest(state, vmid, kind):
    """The guest's state, or the load_config failure."""
    found = state["vms"].get(vmid)
    if found is None or found.get("type", "qemu") != kind:
        config_missing(state, vmid, kind)
    return found


def check_lock(found, kind):
    """PVE::AbstractConfig::check_lock: die "$guest_type is locked ($lock)" (guest_type: VM or CT)."""
    if found.get("lock"):
        return f"{'VM' if kind == 'qemu' else 'CT'} is locked ({found['lock']})"
    return None


def content_of(info):
    return info.get("content", DEFAULT_CONTENT)


def dump_dir(state, storage):
    return Path(state["storages"][storage]["path"]) / "dump"


def usage(state, storage):
    info = state["storages"][storage]
    used = sum(p.stat().st_size for p in Path(info["path"]).rglob("*") if p.is_file()) // 1024
    return info["total_kib"], used, max(0, info["total_kib"] - used)


def volid_path(state, volid):
    storage, _, rest = volid.partition(":")
    if storage not in state["storages"] or not rest.startswith("backup/"):
        die(f"unable to parse volume ID '{volid}'")
    return dump_dir(state, storage) / rest[len("backup/"):]


def archive_path(state, archive):
    """qmrestore and pct restore take a volume ID or a file path."""
    return Path(archive) if archive.startswith("/") else volid_path(state, archive)


def name_time(name):
    match = NAME_RE.match(name)
    return datetime(*map(int, match.groups()[2:8])) if match else None


def backups_of(state, storage, vmid=None):
    """Storage.pm archive_info over the dump folder (Plugin.pm list_volumes): [(volid, path, vmtype, vmid, ctime,
    protected)] of the standard-named archives; `.dat` temp files and sidecars are not archives."""
    rows = []
    for path in sorted(dump_dir(state, storage).glob("vzdump-*")):
        match = NAME_RE.match(path.name)
        if match and (vmid is None or match.group(2) == str(vmid)):
            rows.append((f"{storage}:backup/{path.name}", path, match.group(1), match.group(2),
                         name_time(path.name).timestamp(), (path.parent / (path.name + ".protected")).exists()))
    return rows


def archive_remove(path):
    """Storage.pm archive_remove: a protected archive is refused, else the archive goes, then its .log and
    .notes (archive_auxiliaries_remove: the log named after the base name, the notes after the full name)."""
    if (path.parent / (path.name + ".protected")).exists():
        raise RuntimeError(f"cannot remove protected archive '{path}'")
    path.unlink(missing_ok=True)
    stem = NAME_RE.match(path.name)
    (path.parent / (path.name + ".notes")).unlink(missing_ok=True)
    if stem:
        (path.parent / (path.name.split(".")[0] + ".log")).unlink(missing_ok=True)


def parse_keep(text):
    """The prune-backups property string (`keep-last=1,keep-daily=7` or `keep-all=1`)."""
    return {key: int(value) for key, value in (item.split("=", 1) for item in text.split(",") if item)}


def prune_mark(entries, keep):
    """Storage.pm prune_mark_backup_group with its $prune_mark: entries sorted newest first, each keep-*
    option keeps the newest entry of that many distinct periods (local time), the rest is `remove`."""
    positive = [k for k in keep if k != "keep-all" and keep[k] > 0]
    if keep.get("keep-all") or not positive:
        for entry in entries:
            entry.setdefault("mark", "keep")
        return
    entries.sort(key=lambda e: -e["ctime"])
    periods = {"keep-last": lambda t: t, "keep-hourly": lambda t: time.strftime("%H/%d/%m/%Y", time.localtime(t)),
               "keep-daily": lambda t: time.strftime("%d/%m/%Y", time.localtime(t)),
               "keep-weekly": lambda t: time.strftime("%V/%G", time.localtime(t)),
               "keep-monthly": lambda t: time.strftime("%m/%Y", time.localtime(t)),
               "keep-yearly": lambda t: time.strftime("%Y", time.localtime(t))}
    for option, period in periods.items():
        count = keep.get(option)
        if not count:
            continue
        already = {period(e["ctime"]) for e in entries if e.get("mark") == "keep"}
        newly = set()
        for entry in entries:
            ident = period(entry["ctime"])
            if entry.get("mark") or ident in already:
                continue
            if ident not in newly:
                if len(newly) >= count:
                    break
                newly.add(ident)
                entry["mark"] = "keep"
            else:
                entry["mark"] = "remove"
    for entry in entries:
        entry.setdefault("mark", "remove")


def random_mac(rng=random):
    """PVE::Tools::random_ether_addr with the default prefix BC:24:11 (datacenter.cfg mac_prefix)."""
    return "BC:24:11:" + ":".join(f"{rng.randrange(256):02X}" for _ in range(3))


# --- guest configs ------------------------------------------------------------------------------
DISK_KEYS = re.compile(r"^(scsi|virtio|sata|ide|efidisk|tpmstate)\d+$")


def vm_config(vmid, vm):
    """The VM's config keys (qemu-server.conf): name, memory, one line per disk, then the state's extras."""
    conf = {"memory": str(vm.get("maxmem", 2048)), **({"name": vm["name"]} if vm.get("name") else {})}
    for index, disk in enumerate(disk_list(vm)):
        conf[disk["name"]] = f"local-lvm:vm-{vmid}-disk-{index},size={disk['size'] // 1024}K"
    conf.update(vm.get("config") or {})
    if vm.get("lock"):
        conf["lock"] = vm["lock"]
    return conf


def ct_config(vmid, ct):
    """The container's config keys (pct.conf): vzdump's pct.conf has them all but `lock`."""
    conf = {"arch": "amd64", "hostname": ct["name"], "memory": "512", "ostype": "debian",
            "rootfs": f"{ct.get('rootfs_storage', 'local-lvm')}:vm-{vmid}-disk-0,size=8G"}
    conf.update(ct.get("config") or {})
    if ct.get("lock"):
        conf["lock"] = ct["lock"]
    return conf


def config_text(conf):
    """Keys sorted, as `qm config`/`pct config` print them (qm.pm/pct.pm config: sort keys %$config)."""
    return "".join(f"{key}: {value}\n" for key, value in sorted(conf.items()))


def vm_config_text(vmid, vm):
    return config_text({k: v for k, v in vm_config(vmid, vm).items() if k != "lock"})


def ct_config_text(vmid, ct):
    return config_text({k: v for k, v in ct_config(vmid, ct).items() if k != "lock"})


def parse_config(text):
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and not line.startswith("#"))


def unique_nets(conf):
    """--unique: every netN gets a new random MAC (qemu-server restore_update_config_line; pve-container
    restore_configuration with $unique)."""
    for key in [k for k in conf if re.fullmatch(r"net\d+", k)]:
        conf[key] = re.sub(r"(virtio|e1000|vmxnet3|rtl8139|hwaddr)=([0-9A-Fa-f:]{17})",
                           lambda m: f"{m.group(1)}={random_mac()}", conf[key])
    return conf


# --- the guest's operating system: a MODEL, not Proxmox ---------------------------------------
OS_MAGIC = b"STANDIN-GUEST-OS "


def os_block(model):
    """The first 4 KiB of a VM's first disk holding `model` (what a boot loader would find there)."""
    data = OS_MAGIC + json.dumps(model).encode() + b"\n"
    return data.ljust(BLOCK, b"\0")


def guest_os(vmid, kind):
    """MODEL of what the guest does once started, read from its own bytes: for a VM the first block of its
    first disk (`os_block`), for a container `/etc/standin-os.json` in its root (and it starts only with
    a `/sbin/init`, which lxc-start runs). None: nothing boots. Keys: `agent` (qemu-guest-agent runs),
    `boot_s` (seconds until it answers), `commands` ({shlex.join(argv): {out, err, code}})."""
    if kind == "qemu":
        image = IMAGES / f"vm-{vmid}-disk-0.raw"
        if not image.exists():
            return None
        with open(image, "rb") as handle:
            head = handle.read(BLOCK)
        if not head.startswith(OS_MAGIC):
            return None
        try:
            return json.loads(head[len(OS_MAGIC):].split(b"\n", 1)[0])
        except ValueError:
            return None
    root = CONTAINERS / vmid / "rootfs"
    if not (root / "sbin" / "init").exists():
        return None
    model = root / "etc" / "standin-os.json"
    return json.loads(model.read_text()) if model.exists() else {}


def run_in_guest(vmid, kind, argv):
    """MODEL: (exit code, stdout, stderr) of argv run inside the started guest, or None when the guest has
    no such program. `true` and `false` always exist; a container's `cat FILE...` reads its root."""
    model = guest_os(vmid, kind) or {}
    known = (model.get("commands") or {}).get(shlex.join(argv))
    if known is not None:
        return known.get("code", 0), known.get("out", ""), known.get("err", "")
    if argv in (["true"], ["/bin/true"]):
        return 0, "", ""
    if argv in (["false"], ["/bin/false"]):
        return 1, "", ""
    if kind == "lxc" and argv and argv[0] == "cat":
        root, out = CONTAINERS / vmid / "rootfs", ""
        for name in argv[1:]:
            path = root / name.lstrip("/")
            if not path.is_file():
                return 1, out, f"cat: {name}: No such file or directory\n"
            out += path.read_text(errors="replace")
        return 0, out, ""
    return None


# --- guest disks -----------------------------------------------------------------------------
def disk_list(vm):
    return vm.get("disks") or [{"name": "scsi0", "size": vm.get("disk_kib", 1024) * 1024}]


def disks(state, vmid):
    """[(device name, image path)] of a VM; a missing image is created with every kind of cluster, and
    the state's `os` MODEL (see guest_os) in its first block when the VM has one."""
    vm = state["vms"][vmid]
    found = []
    for index, disk in enumerate(disk_list(vm)):
        image = IMAGES / f"vm-{vmid}-disk-{index}.raw"
        if not image.exists():
            make_disk(image, disk["size"], f"{vmid}-{index}")
            if index == 0 and vm.get("os") is not None:
                with open(image, "r+b") as handle:
                    handle.write(os_block(vm["os"]))
        found.append((f"drive-{disk['name']}", image))
    return found


def make_disk(path, size, seed):
    """A sparse image holding what a backup meets: full clusters, clusters with some zero blocks,
    holes, zeros written out, and data in the last block only."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
        for cluster in range(-(-size // CLUSTER)):
            kind = cluster % 5
            for block in range(CLUSTER // BLOCK):
                offset = cluster * CLUSTER + block * BLOCK
                if offset >= size or kind == 2 or (kind == 1 and block % 3) or (kind == 3 and block != 15):
                    continue
                handle.seek(offset)
                length = min(BLOCK, size - offset)
                handle.write(bytes(length) if kind == 4 else rng.randbytes(length))


def data_clusters(fd, size):
    """Clusters that hold allocated bytes (SEEK_DATA/SEEK_HOLE), so holes are never read."""
    clusters, position = set(), 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        clusters.update(range(start // CLUSTER, (end - 1) // CLUSTER + 1))
        position = end
    return clusters


def backup_order(cluster_counts, seed):
    """(dev_id, cluster) in the order QEMU's backup job hands clusters to the VMA writer: one job per
    drive, all running at once (drives interleave); each copies its drive front to back, except that
    a cluster the guest is about to overwrite is copied first (copy-before-write), so some come early."""
    rng = random.Random(seed)
    orders = {}
    for dev_id, count in cluster_counts.items():
        order, done, early = [], bytearray(count), rng.sample(range(count), count // 8)
        for cluster in range(count):
            if early and rng.random() < 0.25:
                ahead = early.pop()
                if not done[ahead]:
                    done[ahead] = 1
                    order.append(ahead)
            if not done[cluster]:
                done[cluster] = 1
                order.append(cluster)
        orders[dev_id] = order[::-1]
    while orders:
        dev_id = rng.choice(sorted(orders))
        yield dev_id, orders[dev_id].pop()
        if not orders[dev_id]:
            del orders[dev_id]


def write_vma(out, configs, devices, ctime, seed):
    """configs: [(name, bytes)]; devices: [(name, image path)]. Streams the archive into out."""
    ident = uuidlib.uuid4().bytes
    blobs = bytearray(b"\0")  # vma-writer.c starts the blob table at offset 1

    def blob(data):
        offset = len(blobs)
        blobs.extend(struct.pack("<H", len(data)) + data)
        return offset

    header = bytearray(12288)
    header[0:4] = b"VMA\0"
    struct.pack_into(">I16sq", header, 4, 1, ident, ctime)
    for index, (name, data) in enumerate(configs):
        struct.pack_into(">I", header, 2044 + 4 * index, blob(name.encode() + b"\0"))
        struct.pack_into(">I", header, 3068 + 4 * index, blob(data))
    images = {}
    for dev_id, (name, path) in enumerate(devices, start=1):
        size = path.stat().st_size
        struct.pack_into(">IIQ", header, 4096 + 32 * dev_id, blob(name.encode() + b"\0"), 0, size)
        fd = os.open(path, os.O_RDONLY)
        images[dev_id] = (fd, size, data_clusters(fd, size))
    table = -(-len(blobs) // 512) * 512
    struct.pack_into(">III", header, 48, 12288, len(blobs), 12288 + table)
    full = header + blobs + bytes(table - len(blobs))
    full[32:48] = hashlib.md5(full).digest()
    out.write(full)

    entries, data = [], bytearray()

    def flush():
        extent = bytearray(512)
        extent[0:4] = b"VMAE"
        struct.pack_into(">H16s", extent, 6, len(data) // BLOCK, ident)
        for index, entry in enumerate(entries):
            struct.pack_into(">Q", extent, 40 + 8 * index, entry)
        extent[24:40] = hashlib.md5(extent).digest()  # the 512 header bytes only
        out.write(bytes(extent) + bytes(data))
        entries.clear()
        data.clear()

    counts = {dev_id: -(-size // CLUSTER) for dev_id, (_, size, _) in images.items()}
    for dev_id, cluster in backup_order(counts, seed):
        if len(entries) == CLUSTERS_PER_EXTENT:
            flush()
        fd, size, allocated = images[dev_id]
        mask = 0
        if cluster in allocated:
            content = os.pread(fd, CLUSTER, cluster * CLUSTER).ljust(CLUSTER, b"\0")
            for block in range(CLUSTER // BLOCK):
                piece = content[block * BLOCK:(block + 1) * BLOCK]
                if piece != ZERO_BLOCK:
                    mask |= 1 << block
                    data.extend(piece)
        entries.append(mask << 48 | dev_id << 32 | cluster)
    if entries:
        flush()
    for fd, _, _ in images.values():
        os.close(fd)


def read_vma(path):
    """Configs and device bytes of an archive, read by dissect.archive (as `vma extract` would)."""
    from dissect.archive.vma import VMA

    plain = ROOT / f"restore-{os.getpid()}.vma"
    try:
        with open(plain, "wb") as out:
            if subprocess.run(["zstd", "-q", "-d", "-c", str(path)], stdout=out).returncode:
                raise ValueError("zstd failed")
        with open(plain, "rb") as handle:
            vma = VMA(handle)
            configs = {name: data.decode() for name, data in vma.configs().items()}
            devices = []
            for device in vma.devices():
                content = device.open().read()
                if len(content) != device.size:
                    raise ValueError(f"detected missing cluster for stream {device.name}")
                devices.append((device.name, content))
            return configs, devices, vma.header.ctime
    finally:
        plain.unlink(missing_ok=True)


# --- containers -------------------------------------------------------------------------------
def rootfs(vmid, model=None):
    """A container's root file system; a missing one gets files of every kind tar must carry, and with a
    MODEL (see guest_os) an init and the model's file."""
    root = CONTAINERS / vmid / "rootfs"
    if not root.exists() and model is not None:
        (root / "sbin").mkdir(parents=True)
        (root / "sbin" / "init").write_text("#!/bin/sh\n# the stand-in's init: see _pve.guest_os\n")
        os.chmod(root / "sbin" / "init", 0o755)
        (root / "etc").mkdir()
        (root / "etc" / "standin-os.json").write_text(json.dumps(model))
    if not (root / "var").exists():
        rng = random.Random(vmid)
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "hostname").write_text(f"ct{vmid}\n")
        (root / "var" / "lib" / "app").mkdir(parents=True)
        (root / "var" / "lib" / "app" / "data.bin").write_bytes(rng.randbytes(300_000))
        with open(root / "var" / "lib" / "app" / "sparse.img", "wb") as handle:
            handle.truncate(4 << 20)
            handle.seek(1 << 20)
            handle.write(rng.randbytes(10_000))
        deep = root / "srv" / ("a-rather-long-folder-name-" * 3) / ("and-a-long-file-name-" * 3)
        deep.mkdir(parents=True)
        (deep / "notes.txt").write_text("long paths need pax or GNU long-name headers\n")
        (root / "empty").mkdir()
        (root / "etc" / "motd").symlink_to("hostname")
        (root / "tmp").mkdir()
        (root / "tmp" / "scratch").write_text("vzdump excludes /tmp/?*\n")
        os.chmod(root / "etc" / "hostname", 0o640)
    return root


def tar_lxc(out, config_dir, root):
    """GNU tar as VZDump/LXC.pm runs it: pct.conf and pct.fw first, then the root file system."""
    return subprocess.Popen(["tar", "cpf", "-", "--totals", *COMMON_TAR_FLAGS, "--one-file-system",
                             "--warning=no-file-ignored", f"--directory={config_dir}", "./etc/vzdump/pct.conf",
                             "./etc/vzdump/pct.fw", f"--directory={root}", "--anchored", "--exclude=./tmp/?*",
                             "--exclude=./var/tmp/?*", "--exclude=./var/run/?*.pid", "."],
                            stdout=out, stderr=subprocess.PIPE)
