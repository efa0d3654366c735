"""Shared by the stand-in Proxmox VE commands (tests only; Proxmox cannot run here).

They reproduce the documented behaviour in shared/reference/proxmox.md: archive names in local
time, a `.dat` temp name renamed at the end, `INFO:`/`ERROR:` lines on stderr and a timestamped
`.log` sidecar, exit 255 on error, `pvesm status` (both header styles, `--content` filter),
`pvesm list`, pvesh JSON fields, `qm list` columns, qmrestore output, and the failure modes (VM
missing, VM locked, storage full, VMID exists, VM running). State: $BAK_PVE_ROOT/state.json; every
call is logged to calls.log.

Guests have real bytes: a VM's disks are sparse image files under $BAK_PVE_ROOT/images, a
container's root file system is a folder under $BAK_PVE_ROOT/ct. Archives are written the way
Proxmox writes them:
- VMA as pve-qemu's vma-writer.c does: the header md5 over header_size bytes with its md5 field
  zeroed; config names NUL-terminated and config data not; extents of at most 58 clusters (the writer
  flushes before using the 59th slot), each extent's md5 over its 512-byte header alone, then the
  non-zero 4 KiB blocks of its clusters in block-info order; an all-zero cluster is mask 0 with no
  data; clusters in the order QEMU's backup job hands them over (see backup_order), piped through the
  zstd command as vzdump does.
- LXC as pve-container's VZDump/LXC.pm does: GNU tar with Proxmox's common tar flags, the
  `./etc/vzdump/pct.conf` first, then the root file system, piped through zstd.
What they write is read back by other implementations in the tests (dissect.archive, tarfile, GNU tar).
"""

import hashlib
import json
import os
import random
import re
import struct
import subprocess
import sys
import uuid as uuidlib
from datetime import datetime
from pathlib import Path

ROOT = Path(os.environ["BAK_PVE_ROOT"])
STATE = ROOT / "state.json"
IMAGES = ROOT / "images"
CONTAINERS = ROOT / "ct"
NAME_RE = re.compile(r"^vzdump-(qemu|lxc)-(\d+)-(\d{4})_(\d\d)_(\d\d)-(\d\d)_(\d\d)_(\d\d)\.(vma|tar)(\.zst|\.lzo|\.gz)?$")
CLUSTER = 65536
BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)
CLUSTERS_PER_EXTENT = 58  # vma_writer_get_buffer flushes once 58 of the 59 slots are used
# PVE::Storage::Plugin::COMMON_TAR_FLAGS, which vzdump and pct restore both pass to tar.
COMMON_TAR_FLAGS = ["--one-file-system", "-p", "--sparse", "--numeric-owner", "--acls", "--xattrs",
                    "--xattrs-include=user.*", "--xattrs-include=security.capability",
                    "--warning=no-file-ignored", "--warning=no-xattr-write"]


def load():
    return json.loads(STATE.read_text())


def save(state):
    STATE.write_text(json.dumps(state, indent=1))


def log_call(name, args):
    with open(ROOT / "calls.log", "a") as handle:
        handle.write(" ".join([name, *args]) + "\n")


def die(message, code=255):
    print(message, file=sys.stderr)
    sys.exit(code)


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


# --- guest disks -----------------------------------------------------------------------------
def disks(state, vmid):
    """[(device name, image path)] of a VM; a missing image is created with every kind of cluster."""
    vm = state["vms"][vmid]
    found = []
    for index, disk in enumerate(vm.get("disks") or [{"name": "scsi0", "size": vm.get("disk_kib", 1024) * 1024}]):
        image = IMAGES / f"vm-{vmid}-disk-{index}.raw"
        if not image.exists():
            make_disk(image, disk["size"], f"{vmid}-{index}")
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
def rootfs(vmid):
    """A container's root file system; a missing one gets files of every kind tar must carry."""
    root = CONTAINERS / vmid / "rootfs"
    if not root.exists():
        rng = random.Random(vmid)
        (root / "etc").mkdir(parents=True)
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
