"""The VMA reader against archives built by the stand-in's writer: valid, and every kind of damage."""

import hashlib
import io
import struct
import sys

import pytest

from bak import vma
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "standins" / "pve"))


@pytest.fixture(scope="module")
def archive():
    import os

    os.environ.setdefault("BAK_PVE_ROOT", "/nonexistent")
    import _pve

    clusters = {(1, n): bytes([n + 1]) * 65536 for n in range(4)}
    clusters[(1, 5)] = b"\0" * 65536
    return _pve.vma_bytes("name: web\nmemory: 2048\n", [("drive-scsi0", 1 << 20)], clusters, 1706666403)


def test_a_valid_archive_reads_with_configs_devices_and_extents(archive):
    info = vma.read(io.BytesIO(archive), walk_extents=True)
    assert info.version == 1 and info.ctime == 1706666403
    assert info.configs == {"qemu-server.conf": "name: web\nmemory: 2048\n"}
    assert info.devices == {1: {"name": "drive-scsi0", "size": 1 << 20}}
    assert info.extents == 1 and info.data_blocks == 4 * 16


def damaged(archive, offset, value=None, cut=None):
    data = bytearray(archive[:cut] if cut else archive)
    if offset is not None:
        data[offset] = value if value is not None else data[offset] ^ 0xFF
    return io.BytesIO(bytes(data))


@pytest.mark.parametrize("offset, value, message", [
    (0, ord("X"), "wrong magic number"),
    (7, 2, "wrong vma version"),
    (100, None, "header checksum"),      # a flipped byte the md5 covers
    (33, None, "header checksum"),       # the md5 itself is wrong
])
def test_header_damage_is_caught(archive, offset, value, message):
    with pytest.raises(vma.VmaError, match=message):
        vma.read(damaged(archive, offset, value))


def test_truncation_is_caught(archive):
    with pytest.raises(vma.VmaError, match="truncated"):
        vma.read(damaged(archive, None, cut=5000))
    with pytest.raises(vma.VmaError, match="truncated"):
        vma.read(damaged(archive, None, cut=len(archive) - 100), walk_extents=True)


def test_extent_damage_is_caught_only_by_the_walk(archive):
    header_size = struct.unpack_from(">I", archive, 56)[0]
    corrupt = damaged(archive, header_size + 512 + 10)
    vma.read(io.BytesIO(corrupt.getvalue()))  # the header alone is fine
    with pytest.raises(vma.VmaError, match="extent 0: wrong checksum"):
        vma.read(corrupt, walk_extents=True)
    assert hashlib.md5(archive).hexdigest()  # the original is untouched
