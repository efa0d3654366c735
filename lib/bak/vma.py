"""Proxmox VMA archives, checked in one streamed pass (decompressed on the fly) as `vma verify` does.

Layout (pve-qemu vma_spec.txt, vma-reader.c, vma-writer.c): a 12288-byte big-endian header and its
blob buffer, whose md5 covers header_size bytes with the md5 field zeroed; then extents. An extent
is a 512-byte header (`VMAE`, block count, uuid, md5, 59 block infos) whose md5 covers those 512
bytes alone (md5 field zeroed, the data is not in it), followed by the non-zero 4 KiB blocks its
block infos mark, in block-info order. Every cluster of every device is written exactly once, in
whatever order the backup job copied it; an all-zero cluster is a block info with mask 0 and no data.

The walk keeps one bit per 64 KiB cluster and device (4 KiB for a 2 GiB disk) and never holds
block data, so memory stays flat whatever the disk size.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from bak.errors import VerifyFailed
from bak.streams import read_upto

MAGIC = b"VMA\0"
EXTENT_MAGIC = b"VMAE"
HEADER_FIXED = 12288
EXTENT_HEADER = 512
BLOCKS_PER_EXTENT = 59
CLUSTER = 65536
BLOCK = 4096
BLOCKS_PER_CLUSTER = CLUSTER // BLOCK
VMSTATE = "vmstate"  # the VM's RAM: written in cluster order, not a disk, not counted for completeness
_SKIP_PIECE = 1 << 20
_NOT_ALL_SET = re.compile(rb"[^\xff]")


class VmaError(VerifyFailed):
    code = "vma_invalid"


@dataclass(frozen=True)
class BlockInfo:
    """One cluster carried by an extent: its device, its number, which of its 16 blocks are stored."""

    dev_id: int
    cluster: int
    mask: int

    @property
    def stored_blocks(self) -> int:
        return self.mask.bit_count()


@dataclass(frozen=True)
class ExtentHeader:
    block_count: int
    uuid: bytes
    clusters: tuple[BlockInfo, ...]


@dataclass
class VmaInfo:
    version: int
    uuid: str
    ctime: int
    configs: dict[str, str]
    devices: dict[int, dict]
    extents: int = 0
    clusters: int = 0
    data_blocks: int = 0


def parse_blockinfo(entry: int) -> BlockInfo | None:
    """A block info is a u64: mask in bits 63-48, dev_id in 39-32, cluster in 31-0. The reader
    skips an entry whose dev_id is 0 (vma-reader.c), so that is an unused slot."""
    dev_id = (entry >> 32) & 0xFF
    if not dev_id:
        return None
    return BlockInfo(dev_id, entry & 0xFFFFFFFF, entry >> 48)


def parse_extent_header(raw: bytes, where: str = "extent") -> ExtentHeader:
    """Magic, md5 over the 512 header bytes alone, and a block count that matches the masks."""
    if raw[:4] != EXTENT_MAGIC or raw[4:6] != b"\0\0":
        raise VmaError(f"{where}: not an extent header (wrong magic)")
    if hashlib.md5(raw[:24] + bytes(16) + raw[40:EXTENT_HEADER]).digest() != raw[24:40]:
        raise VmaError(f"{where}: wrong extent header checksum")
    block_count, uuid = struct.unpack_from(">H16s", raw, 6)
    clusters = tuple(info for info in map(parse_blockinfo, struct.unpack_from(f">{BLOCKS_PER_EXTENT}Q", raw, 40)) if info)
    stored = sum(info.stored_blocks for info in clusters)
    if stored != block_count:
        raise VmaError(f"{where}: block count {block_count}, but its block infos mark {stored} blocks")
    return ExtentHeader(block_count, uuid, clusters)


class Coverage:
    """Which clusters of one device the extents delivered, one bit each."""

    def __init__(self, name: str, size: int):
        self.name = name
        self.size = size
        self.clusters = -(-size // CLUSTER)
        self.bits = bytearray(0 if name == VMSTATE else (self.clusters + 7) // 8)
        self.present = 0

    def add(self, info: BlockInfo, where: str) -> None:
        if self.name == VMSTATE:
            if info.cluster != self.present:
                raise VmaError(f"{where}: vmstate cluster {info.cluster} out of order (expected {self.present})")
            self.present += 1
            return
        if info.cluster >= self.clusters:
            raise VmaError(f"{where}: cluster {info.cluster} is past the end of {self.name} ({self.clusters} clusters)")
        blocks_inside = -(-(self.size - info.cluster * CLUSTER) // BLOCK)
        if info.mask >> min(blocks_inside, BLOCKS_PER_CLUSTER):
            raise VmaError(f"{where}: cluster {info.cluster} of {self.name} stores blocks past the device's end")
        byte, bit = divmod(info.cluster, 8)
        if self.bits[byte] >> bit & 1:
            raise VmaError(f"{where}: cluster {info.cluster} of {self.name} appears twice")
        self.bits[byte] |= 1 << bit
        self.present += 1

    def first_missing(self) -> int | None:
        if self.name == VMSTATE or self.present == self.clusters:
            return None
        index = _NOT_ALL_SET.search(self.bits).start()
        byte = self.bits[index]
        return index * 8 + next(bit for bit in range(8) if not byte >> bit & 1)


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = read_upto(stream, size)
    if len(data) != size:
        raise VmaError(f"truncated archive: {what} ends after {len(data)} of {size} bytes")
    return data


def _skip(stream: BinaryIO, size: int, what: str) -> None:
    done = 0
    while done < size:
        piece = stream.read(min(_SKIP_PIECE, size - done))
        if not piece:
            raise VmaError(f"truncated archive: {what} ends after {done} of {size} bytes")
        done += len(piece)


def _blob(buffer: bytes, offset: int) -> bytes:
    if offset <= 0 or offset + 2 > len(buffer):
        raise VmaError(f"blob offset {offset} outside the blob buffer")
    (length,) = struct.unpack_from("<H", buffer, offset)
    return buffer[offset + 2: offset + 2 + length]


def read(stream: BinaryIO, walk_extents: bool = False) -> VmaInfo:
    """The header (md5, configs, devices); with walk_extents, every extent and the completeness check."""
    head = _read_exact(stream, HEADER_FIXED, "main header")
    if head[:4] != MAGIC:
        raise VmaError("not a vma file - wrong magic number")
    version, uuid, ctime = struct.unpack_from(">I16sq", head, 4)
    if version != 1:
        raise VmaError(f"wrong vma version {version}")
    blob_offset, blob_size, header_size = struct.unpack_from(">III", head, 48)
    if header_size < HEADER_FIXED or blob_offset < HEADER_FIXED or blob_offset + blob_size > header_size:
        raise VmaError(f"main header: impossible sizes (header {header_size}, blobs {blob_offset}+{blob_size})")
    header = head + _read_exact(stream, header_size - HEADER_FIXED, "main header blob buffer")
    if hashlib.md5(header[:32] + bytes(16) + header[48:]).digest() != header[32:48]:
        raise VmaError("wrong main header checksum")
    blobs = header[blob_offset: blob_offset + blob_size]
    names = struct.unpack_from(">256I", header, 2044)
    datas = struct.unpack_from(">256I", header, 3068)
    configs = {_blob(blobs, n).rstrip(b"\0").decode("utf-8", "replace"): _blob(blobs, d).decode("utf-8", "replace")
               for n, d in zip(names, datas) if n}
    devices = {}
    for dev_id in range(1, 256):
        name_ptr, _, size = struct.unpack_from(">IIQ", header, 4096 + 32 * dev_id)
        if name_ptr:
            devices[dev_id] = {"name": _blob(blobs, name_ptr).rstrip(b"\0").decode("utf-8", "replace"), "size": size}
    info = VmaInfo(version, uuid.hex(), ctime, configs, devices)
    if walk_extents:
        _walk(stream, info, uuid, header_size)
    return info


def _walk(stream: BinaryIO, info: VmaInfo, uuid: bytes, offset: int) -> None:
    coverage = {dev_id: Coverage(device["name"], device["size"]) for dev_id, device in info.devices.items()}
    while True:
        where = f"extent {info.extents} (byte {offset})"
        raw = read_upto(stream, EXTENT_HEADER)
        if not raw:
            break
        if len(raw) < EXTENT_HEADER:
            raise VmaError(f"truncated archive: {where} header ends after {len(raw)} of {EXTENT_HEADER} bytes")
        extent = parse_extent_header(raw, where)
        if extent.uuid != uuid:
            raise VmaError(f"{where}: uuid does not match the main header")
        for cluster in extent.clusters:
            device = coverage.get(cluster.dev_id)
            if device is None:
                raise VmaError(f"{where}: cluster {cluster.cluster} of device {cluster.dev_id}, which the header does not list")
            device.add(cluster, where)
        _skip(stream, extent.block_count * BLOCK, f"{where} data")
        offset += EXTENT_HEADER + extent.block_count * BLOCK
        info.extents += 1
        info.clusters += len(extent.clusters)
        info.data_blocks += extent.block_count
    for device in coverage.values():
        missing = device.first_missing()
        if missing is not None:
            raise VmaError(f"incomplete archive: cluster {missing} of {device.name} is missing "
                           f"({device.present} of {device.clusters} clusters in {info.extents} extents)")
