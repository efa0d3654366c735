"""Proxmox VMA archives, read from a stream (decompressed on the fly): header, configs, devices, extents.

Layout (pve-qemu vma.h): a 12288-byte big-endian header, then a blob buffer (u16 little-endian
length + data), the header's md5 computed with its md5 field zeroed; then 512-byte extent headers
(`VMAE`, block count, uuid, md5, 59 block infos) each followed by the non-zero 4 KiB blocks they list.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from bak.errors import VerifyFailed

MAGIC = b"VMA\0"
EXTENT_MAGIC = b"VMAE"
HEADER_FIXED = 12288
EXTENT_HEADER = 512
BLOCKS_PER_EXTENT = 59
CLUSTER = 65536
BLOCK = 4096


class VmaError(VerifyFailed):
    code = "vma_invalid"


@dataclass
class VmaInfo:
    version: int
    uuid: str
    ctime: int
    configs: dict[str, str]
    devices: dict[int, dict]
    extents: int = 0
    data_blocks: int = 0
    extra: dict = field(default_factory=dict)


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    chunks, missing = [], size
    while missing:
        chunk = stream.read(missing)
        if not chunk:
            raise VmaError(f"truncated archive: {what} ends after {size - missing} of {size} bytes")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _blob(buffer: bytes, offset: int) -> bytes:
    if offset <= 0 or offset + 2 > len(buffer):
        raise VmaError(f"blob offset {offset} outside the blob buffer")
    (length,) = struct.unpack_from("<H", buffer, offset)
    return buffer[offset + 2: offset + 2 + length]


def read(stream: BinaryIO, walk_extents: bool = False) -> VmaInfo:
    head = _read_exact(stream, HEADER_FIXED, "header")
    if head[:4] != MAGIC:
        raise VmaError("not a vma file - wrong magic number")
    version, uuid, ctime = struct.unpack_from(">I16sq", head, 4)
    if version != 1:
        raise VmaError(f"wrong vma version {version}")
    blob_offset, blob_size, header_size = struct.unpack_from(">III", head, 48)
    if header_size < HEADER_FIXED or blob_offset < HEADER_FIXED or blob_offset + blob_size > header_size:
        raise VmaError(f"impossible header sizes (header {header_size}, blobs {blob_offset}+{blob_size})")
    header = head + _read_exact(stream, header_size - HEADER_FIXED, "blob buffer")
    unsummed = header[:32] + b"\0" * 16 + header[48:]
    if hashlib.md5(unsummed).digest() != header[32:48]:
        raise VmaError("wrong vma header checksum")
    blobs = header[blob_offset: blob_offset + blob_size]
    names = struct.unpack_from(">256I", header, 2044)
    datas = struct.unpack_from(">256I", header, 3068)
    configs = {_blob(blobs, n).rstrip(b"\0").decode("utf-8", "replace"): _blob(blobs, d).decode("utf-8", "replace")
               for n, d in zip(names, datas) if n}
    devices = {}
    for dev_id in range(1, 256):
        name_ptr, _, size = struct.unpack_from(">IIQ", header, 4096 + 32 * dev_id)
        if name_ptr:
            devices[dev_id] = {"name": _blob(blobs, name_ptr).rstrip(b"\0").decode(), "size": size}
    info = VmaInfo(version, uuid.hex(), ctime, configs, devices)
    if walk_extents:
        _walk(stream, info, uuid)
    return info


def _walk(stream: BinaryIO, info: VmaInfo, uuid: bytes) -> None:
    while True:
        first = stream.read(EXTENT_HEADER)
        if not first:
            return
        extent = first if len(first) == EXTENT_HEADER else first + _read_exact(stream, EXTENT_HEADER - len(first), "extent header")
        if extent[:4] != EXTENT_MAGIC:
            raise VmaError(f"extent {info.extents}: wrong extent magic")
        block_count, ext_uuid, md5 = struct.unpack_from(">H16s16s", extent, 6)
        if ext_uuid != uuid:
            raise VmaError(f"extent {info.extents}: uuid does not match the header")
        blocks = 0
        for index in range(BLOCKS_PER_EXTENT):
            (entry,) = struct.unpack_from(">Q", extent, 40 + 8 * index)
            if not entry:
                continue
            mask, dev_id, cluster = entry >> 48, (entry >> 32) & 0xFF, entry & 0xFFFFFFFF
            device = info.devices.get(dev_id)
            if device is None or cluster * CLUSTER >= device["size"]:
                raise VmaError(f"extent {info.extents}: block for unknown device {dev_id} or beyond its end")
            blocks += bin(mask).count("1")
        if blocks != block_count:
            raise VmaError(f"extent {info.extents}: block count {block_count} does not match its block infos ({blocks})")
        data = _read_exact(stream, blocks * BLOCK, f"extent {info.extents} data")
        if hashlib.md5(extent[:24] + b"\0" * 16 + extent[40:] + data).digest() != md5:
            raise VmaError(f"extent {info.extents}: wrong checksum")
        info.extents += 1
        info.data_blocks += blocks
