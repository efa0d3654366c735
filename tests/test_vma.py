"""VMA: the stand-in writes archives as vma-writer.c does, dissect.archive (an independent reader)
reads them back byte for byte, and bak's one-pass walk accepts them and names every kind of damage."""

import hashlib
import io
import os
import random
import struct
import sys
import time
import tracemalloc

import pytest
from dissect.archive.vma import VMA  # an independent reader: the stand-in and bak cannot share a mistake
from hypothesis import given, settings
from hypothesis import strategies as st

from bak import vma
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "standins" / "pve"))
os.environ.setdefault("BAK_PVE_ROOT", "/nonexistent")  # _pve reads it on import; these tests pass paths
import _pve  # noqa: E402

CONFIG = [("qemu-server.conf", b"name: web\nmemory: 2048\n")]


def build(tmp_path, sizes, seed="s"):
    """Disk images of `sizes` bytes (every kind of cluster) and the VMA the stand-in writes of them."""
    images = []
    for index, size in enumerate(sizes):
        image = tmp_path / f"disk-{index}.raw"
        _pve.make_disk(image, size, f"{seed}-{index}")
        images.append((f"drive-scsi{index}", image))
    out = io.BytesIO()
    _pve.write_vma(out, CONFIG, images, 1706666403, seed)
    return out.getvalue(), images


def extents(archive):
    """(offset, block count, [(dev_id, cluster, mask)]) of each extent, parsed here from the spec."""
    offset, found = struct.unpack_from(">I", archive, 56)[0], []
    while offset < len(archive):
        count = struct.unpack_from(">H", archive, offset + 6)[0]
        infos = [(e >> 32 & 0xFF, e & 0xFFFFFFFF, e >> 48) for e in struct.unpack_from(">59Q", archive, offset + 40)
                 if e >> 32 & 0xFF]
        found.append((offset, count, infos))
        offset += 512 + count * 4096
    return found


@pytest.fixture(scope="module")
def two_disks(tmp_path_factory):
    return build(tmp_path_factory.mktemp("vma"), [4 << 20, 307712])  # 64 clusters, and a last cluster cut short


# --- the stand-in against an independent reader ------------------------------------------------
@pytest.mark.parametrize("sizes", [[1 << 20], [4 << 20, 307712], [65536 * 58], [65536 * 58 + 4096, 512 * 3]])
def test_dissect_reads_every_standin_archive_and_the_bytes_match(tmp_path, sizes):
    archive, images = build(tmp_path, sizes)
    reader = VMA(io.BytesIO(archive))  # checks the header md5
    assert reader.config("qemu-server.conf") == CONFIG[0][1]
    assert all(extent.size >= 0 for extent in reader.extents())  # each Extent checks its header md5
    devices = reader.devices()
    assert [d.name for d in devices] == [name for name, _ in images]
    for device, (_, image) in zip(devices, images):
        assert device.size == image.stat().st_size
        assert device.open().read() == image.read_bytes()
    info = vma.read(io.BytesIO(archive), walk_extents=True)
    assert info.clusters == sum(-(-size // 65536) for size in sizes)


def test_standin_writes_clusters_in_backup_job_order_with_zero_clusters(two_disks):
    archive, _ = two_disks
    found = extents(archive)
    order = [(dev, cluster) for _, _, infos in found for dev, cluster, _ in infos]
    assert len(order) == len(set(order)) == 64 + 5  # every cluster exactly once
    assert order != sorted(order) and [c for d, c in order if d == 1] != sorted(c for d, c in order if d == 1)
    assert any(mask == 0 for _, _, infos in found for _, _, mask in infos)      # all-zero clusters: no data
    assert any(0 < mask < 0xFFFF for _, _, infos in found for _, _, mask in infos)  # some zero blocks inside
    assert len(found) == 2 and len(found[0][2]) == 58  # vma-writer.c flushes at 58 clusters


def test_extent_md5_covers_the_header_only(two_disks):
    archive, _ = two_disks
    offset, count, _ = extents(archive)[0]
    header = bytearray(archive[offset:offset + 512])
    header[24:40] = bytes(16)
    assert hashlib.md5(header).digest() == archive[offset + 24:offset + 40]
    assert vma.read(io.BytesIO(archive), walk_extents=True).extents == 2
    # what bak and the stand-in used to do, md5 over header and data, is what Proxmox does not write
    wrong = bytearray(archive)
    wrong[offset + 24:offset + 40] = hashlib.md5(bytes(header) + archive[offset + 512:offset + 512 + count * 4096]).digest()
    with pytest.raises(vma.VmaError, match=rf"extent 0 \(byte {offset}\): wrong extent header checksum"):
        vma.read(io.BytesIO(bytes(wrong)), walk_extents=True)


# --- damage, each named -------------------------------------------------------------------------
def test_a_flipped_byte_in_an_extent_header_names_the_extent(two_disks):
    archive, _ = two_disks
    offset = extents(archive)[1][0]
    for position in (offset + 45, offset + 30, offset + 8):  # a block info, the md5, the uuid
        damaged = bytearray(archive)
        damaged[position] ^= 0x01
        vma.read(io.BytesIO(bytes(damaged)))  # the main header alone is fine
        with pytest.raises(vma.VmaError, match=rf"^extent 1 \(byte {offset}\): wrong extent header checksum"):
            vma.read(io.BytesIO(bytes(damaged)), walk_extents=True)


@pytest.mark.parametrize("position, value, message", [
    (0, ord("X"), "wrong magic number"),
    (7, 2, "wrong vma version"),
    (100, None, "wrong main header checksum"),     # a byte the md5 covers
    (12288 + 5, None, "wrong main header checksum"),  # in the blob buffer (a config name)
    (33, None, "wrong main header checksum"),      # the md5 itself
])
def test_main_header_damage_is_named(two_disks, position, value, message):
    archive, _ = two_disks
    damaged = bytearray(archive)
    damaged[position] = value if value is not None else damaged[position] ^ 0xFF
    with pytest.raises(vma.VmaError, match=message):
        vma.read(io.BytesIO(bytes(damaged)))


def test_an_archive_cut_at_an_extent_boundary_names_the_first_missing_cluster(two_disks):
    archive, _ = two_disks
    last_offset, _, dropped = extents(archive)[-1]
    present = {(dev, cluster) for _, _, infos in extents(archive)[:-1] for dev, cluster, _ in infos}
    first_dev = min(dev for dev, _, _ in dropped)
    missing = min(c for c in range(64 if first_dev == 1 else 5) if (first_dev, c) not in present)
    with pytest.raises(vma.VmaError, match=rf"incomplete archive: cluster {missing} of drive-scsi{first_dev - 1} is missing"):
        vma.read(io.BytesIO(archive[:last_offset]), walk_extents=True)


def test_truncation_inside_an_extent_and_a_duplicated_extent_are_caught(two_disks):
    archive, _ = two_disks
    (first, count, infos), (second, _, _) = extents(archive)[:2]
    with pytest.raises(vma.VmaError, match=rf"truncated archive: extent 1 \(byte {second}\) data ends after"):
        vma.read(io.BytesIO(archive[:second + 512 + 100]), walk_extents=True)
    with pytest.raises(vma.VmaError, match=r"truncated archive: extent 1 .* header ends after 100 of 512"):
        vma.read(io.BytesIO(archive[:second + 100]), walk_extents=True)
    with pytest.raises(vma.VmaError, match=rf"cluster {infos[0][1]} of drive-scsi{infos[0][0] - 1} appears twice"):
        vma.read(io.BytesIO(archive + archive[first:first + 512 + count * 4096]), walk_extents=True)
    with pytest.raises(vma.VmaError, match="truncated archive: main header"):
        vma.read(io.BytesIO(archive[:5000]))


# --- parsers, property-based ------------------------------------------------------------------------
entries = st.tuples(st.integers(1, 255), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF))


def extent_header(infos, uuid=b"u" * 16):
    raw = bytearray(512)
    raw[0:4] = b"VMAE"
    struct.pack_into(">H16s", raw, 6, sum(bin(mask).count("1") for _, _, mask in infos), uuid)
    for index, (dev, cluster, mask) in enumerate(infos):
        struct.pack_into(">Q", raw, 40 + 8 * index, mask << 48 | dev << 32 | cluster)
    raw[24:40] = hashlib.md5(raw).digest()
    return bytes(raw)


@given(entries, st.integers(0, 255))
def test_blockinfo_fields(entry, reserved):
    dev, cluster, mask = entry
    info = vma.parse_blockinfo(mask << 48 | reserved << 40 | dev << 32 | cluster)
    assert (info.dev_id, info.cluster, info.mask, info.stored_blocks) == (dev, cluster, mask, bin(mask).count("1"))
    assert vma.parse_blockinfo(mask << 48 | reserved << 40 | cluster) is None  # dev_id 0: an unused slot


@settings(max_examples=60)
@given(st.lists(entries, max_size=59), st.data())
def test_extent_header_parses_and_any_flipped_byte_is_caught(infos, data):
    raw = extent_header(infos)
    parsed = vma.parse_extent_header(raw)
    assert [(i.dev_id, i.cluster, i.mask) for i in parsed.clusters] == infos
    assert parsed.block_count == sum(bin(mask).count("1") for _, _, mask in infos) and parsed.uuid == b"u" * 16
    position, flip = data.draw(st.integers(0, 511)), data.draw(st.integers(1, 255))
    damaged = bytearray(raw)
    damaged[position] ^= flip
    with pytest.raises(vma.VmaError, match="wrong magic|wrong extent header checksum"):
        vma.parse_extent_header(bytes(damaged))


@given(st.integers(1, 3000), st.data())
def test_coverage_names_the_first_missing_cluster(clusters, data):
    dropped = data.draw(st.sets(st.integers(0, clusters - 1), max_size=5))
    order = data.draw(st.permutations(range(clusters))) if clusters < 200 else random.Random(clusters).sample(range(clusters), clusters)
    coverage = vma.Coverage("drive-scsi0", clusters * 65536 - 512)
    for cluster in order:
        if cluster not in dropped:
            coverage.add(vma.BlockInfo(1, cluster, 0), "extent")
    assert coverage.first_missing() == (min(dropped) if dropped else None)


# --- memory stays flat ------------------------------------------------------------------------------
def sparse_image(path, size):
    """A sparse image with 64 KiB of data every 32 MiB: the walk sees every cluster, few hold data."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, 32 << 20):
            handle.seek(offset)
            handle.write(random.Random(offset).randbytes(65536))


def walk_peak(path):
    tracemalloc.start()
    try:
        with open(path, "rb") as handle:
            info = vma.read(handle, walk_extents=True)
        return info, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_walking_a_2gib_sparse_device_keeps_memory_flat(tmp_path):
    peaks = {}
    for size in (64 << 20, 2 << 30):
        image = tmp_path / f"{size}.raw"
        sparse_image(image, size)
        archive = tmp_path / f"{size}.vma"
        with open(archive, "wb") as out:
            _pve.write_vma(out, CONFIG, [("drive-scsi0", image)], 1706666403, "big")
        started = time.monotonic()
        info, peaks[size] = walk_peak(archive)
        assert info.clusters == size // 65536 and info.data_blocks == size // (32 << 20) * 16
        assert time.monotonic() - started < 10
    # 32768 clusters tracked in a 4 KiB bitmap; the data is skipped in pieces, never held
    assert peaks[2 << 30] < 2 << 20, peaks
    assert peaks[2 << 30] - peaks[64 << 20] < 64 << 10, peaks


# --- every compression vzdump writes ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vzdump-qemu-100-2024_01_31-02_00_03.vma.zst", "vzdump-qemu-100-2024_01_31-02_00_03.vma.gz",
                                  "vzdump-qemu-100-2024_01_31-02_00_03.vma.bz2", "vzdump-qemu-100-2024_01_31-02_00_03.vma"])
def test_every_compression_is_read_whole_and_a_cut_is_caught(two_disks, name):
    import bz2
    import gzip

    import zstandard

    from bak.errors import VerifyFailed
    from bak.methods.vzdump import Decompressed, check_archive

    archive, _ = two_disks
    pack = {"zst": zstandard.ZstdCompressor(write_checksum=True).compress, "gz": gzip.compress, "vma": bytes,
            "bz2": bz2.compress}
    data = pack[name.rsplit(".", 1)[1]](archive)
    assert check_archive(name, Decompressed(name, io.BytesIO(data)), True)["extents"] == 2
    with pytest.raises(VerifyFailed, match="truncated|incomplete|gzip: |bzip2: "):
        check_archive(name, Decompressed(name, io.BytesIO(data[:len(data) * 2 // 3])), True)
    with pytest.raises(VerifyFailed, match="lzo copy cannot be checked away from the PVE host"):
        Decompressed(name + ".lzo", io.BytesIO(data))
