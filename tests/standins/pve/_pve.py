"""Shared by the stand-in Proxmox VE commands (tests only; Proxmox cannot run here).

They reproduce the documented behaviour in shared/reference/proxmox.md: archive names in local
time, a `.dat` temp name renamed at the end, `INFO:`/`ERROR:` lines on stderr and a timestamped
`.log` sidecar, exit 255 on error, real zstd-compressed VMA archives (header md5, config blob,
device, extents with md5s), `pvesm status` (both header styles), `pvesm list`, pvesh JSON fields,
`qm list` columns, qmrestore output, and the failure modes (VM missing, VM locked, storage full,
VMID exists, VM running). State: $BAK_PVE_ROOT/state.json; every call is logged to calls.log.
"""

import hashlib
import json
import os
import re
import struct
import sys
import uuid as uuidlib
from datetime import datetime
from pathlib import Path

ROOT = Path(os.environ["BAK_PVE_ROOT"])
STATE = ROOT / "state.json"
NAME_RE = re.compile(r"^vzdump-(qemu|lxc)-(\d+)-(\d{4})_(\d\d)_(\d\d)-(\d\d)_(\d\d)_(\d\d)\.(vma|tar)(\.zst|\.lzo|\.gz)?$")


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


# --- VMA writer (the format bak's reader checks) ---------------------------------------------
def vma_bytes(config_text, devices, clusters, ctime):
    """devices: [(name, size)]; clusters: {(dev_id, cluster_number): 64 KiB bytes}."""
    ident = uuidlib.uuid4().bytes
    blobs = bytearray(b"\0")

    def blob(data):
        offset = len(blobs)
        blobs.extend(struct.pack("<H", len(data)) + data)
        return offset

    header = bytearray(12288)
    header[0:4] = b"VMA\0"
    struct.pack_into(">I16sq", header, 4, 1, ident, ctime)
    struct.pack_into(">I", header, 2044, blob(b"qemu-server.conf\0"))
    struct.pack_into(">I", header, 3068, blob(config_text.encode()))
    for dev_id, (name, size) in enumerate(devices, start=1):
        struct.pack_into(">IIQ", header, 4096 + 32 * dev_id, blob(name.encode() + b"\0"), 0, size)
    blob_size = len(blobs)
    padded = (blob_size + 511) // 512 * 512
    struct.pack_into(">III", header, 48, 12288, blob_size, 12288 + padded)
    full = bytes(header) + bytes(blobs) + b"\0" * (padded - blob_size)
    md5 = hashlib.md5(full).digest()
    full = full[:32] + md5 + full[48:]
    out = [full]
    items = sorted(clusters.items())
    for start in range(0, len(items), 59):
        infos, data = [], bytearray()
        for (dev_id, number), content in items[start:start + 59]:
            mask = 0
            for block in range(16):
                piece = content[block * 4096:(block + 1) * 4096]
                if piece.strip(b"\0"):
                    mask |= 1 << block
                    data.extend(piece)
            infos.append((mask << 48) | (dev_id << 32) | number)
        extent = bytearray(512)
        extent[0:4] = b"VMAE"
        struct.pack_into(">H16s", extent, 6, sum(bin(i >> 48).count("1") for i in infos), ident)
        for index, info in enumerate(infos):
            struct.pack_into(">Q", extent, 40 + 8 * index, info)
        extent[24:40] = hashlib.md5(bytes(extent) + bytes(data)).digest()
        out.append(bytes(extent) + bytes(data))
    return b"".join(out)


def vma_config(path):
    """The qemu-server.conf blob of an archive (what qmrestore prints as CFG)."""
    import zstandard

    with open(path, "rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
        head = stream.read(12288)
        if head[:4] != b"VMA\0":
            die("command 'zstd -q -d -c ...' failed: not a vma file - wrong magic number")
        header_size = struct.unpack_from(">I", head, 56)[0]
        header = head + stream.read(header_size - 12288)
    offset = struct.unpack_from(">I", header, 3068)[0]
    blobs = header[12288:]
    length = struct.unpack_from("<H", blobs, offset)[0]
    return blobs[offset + 2: offset + 2 + length].decode()


def name_time(name):
    match = NAME_RE.match(name)
    return datetime(*map(int, match.groups()[2:8])) if match else None
