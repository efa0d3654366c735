"""Container archives: bak's one-pass tar check against tars written by other implementations
(Python's tarfile here, GNU tar through the stand-in vzdump in test_proxmox.py), and its parsers."""

import io
import os
import random
import re
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bak import lxc

PCT_CONF = b"arch: amd64\nhostname: proxy\nostype: debian\nrootfs: local-lvm:vm-200-disk-0,size=8G\n"


def write_tar(members, tar_format=tarfile.PAX_FORMAT):
    """A tar written by tarfile: pct.conf first, then (name, data or None for a folder) members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as tar:
        for name, data in [("./etc/vzdump/pct.conf", PCT_CONF), *members]:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/\\"), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(names, min_size=1, max_size=4).map(lambda p: "./" + "/".join(p)),
                          st.one_of(st.none(), st.binary(max_size=3000))), max_size=8),
       st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_tars_written_by_tarfile_read_whole(members, tar_format):
    archive = write_tar(members, tar_format)
    read = lxc.read(io.BytesIO(archive))
    assert read.config == PCT_CONF.decode() and read.members == 1 + len(members)
    assert read.data_bytes == len(PCT_CONF) + sum(len(data) for _, data in members if data is not None)
    assert lxc.read(io.BytesIO(archive), full=False).members == 1


def test_damage_is_named():
    archive = write_tar([("./var/lib/app/data.bin", os.urandom(5000)), ("./srv", None), ("./etc/hostname", b"proxy\n")])
    offsets = [m.offset for m in tarfile.open(fileobj=io.BytesIO(archive))]
    cases = {
        "wrong header checksum": archive[:offsets[2] + 3] + b"X" + archive[offsets[2] + 4:],
        "without the end-of-archive marker": archive[:offsets[3]],
        "data.bin' (byte": archive[:offsets[1] + 3000],
        "not a vzdump container archive": archive[offsets[1]:],
        "names no rootfs": archive.replace(b"rootfs:", b"rootfx:"),
    }
    for message, damaged in cases.items():
        with pytest.raises(lxc.TarError, match=re.escape(message)):
            lxc.read(io.BytesIO(damaged))


def test_a_lone_zero_record_or_trailing_data_is_damage():
    archive = write_tar([("./a", b"x" * 10)])
    end = len(archive.rstrip(b"\0"))
    end += -end % 512
    with pytest.raises(lxc.TarError, match="lone zero record"):
        lxc.read(io.BytesIO(archive[:end] + bytes(512) + b"junk" + bytes(508)))
    with pytest.raises(lxc.TarError, match="after the end-of-archive marker"):
        lxc.read(io.BytesIO(archive + b"junk"))


@given(st.integers(0, 8**11 - 1))
def test_octal_numbers(value):
    assert lxc.parse_number(b"%011o\0" % value, "h") == value
    assert lxc.parse_number(b"%o \0" % value, "h") == value


@given(st.integers(0, 2**88 - 1))
def test_base256_numbers(value):
    assert lxc.parse_number(bytes([0x80]) + value.to_bytes(11, "big"), "h") == value


@given(st.dictionaries(st.text(st.characters(exclude_characters="=\0", exclude_categories=("Cs",)), min_size=1, max_size=30),
                       st.text(st.characters(exclude_categories=("Cs",)), max_size=300), max_size=6))
def test_pax_records(records):
    data = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while length != len(body) + len(str(length)):  # the length counts its own digits
            length = len(body) + len(str(length))
        data += str(length).encode() + body
    assert lxc.parse_pax(data + bytes(-len(data) % 512), "h") == records


@given(st.binary(min_size=512, max_size=512), st.integers(0, 511), st.integers(1, 255))
def test_header_checksum(raw, position, flip):
    header = bytearray(raw)
    header[148:156] = b"%06o\0 " % (sum(header[:148]) + 256 + sum(header[156:]))
    assert lxc.checksum_ok(bytes(header), "h")
    if not 148 <= position < 156:
        header[position] ^= flip
        assert not lxc.checksum_ok(bytes(header), "h")


def test_sparse_members_written_by_gnu_tar_check_their_map(tmp_path):
    """GNU tar --sparse in pax format (what vzdump writes): a map, then only the data blocks."""
    import subprocess

    from conftest import need

    need("tar")
    (tmp_path / "etc" / "vzdump").mkdir(parents=True)
    (tmp_path / "etc" / "vzdump" / "pct.conf").write_bytes(PCT_CONF)
    with open(tmp_path / "sparse.img", "wb") as handle:
        handle.truncate(8 << 20)
        for offset in (0, 3 << 20, (8 << 20) - 4096):
            handle.seek(offset)
            handle.write(random.Random(offset).randbytes(4096))
    archive = subprocess.run(["tar", "cf", "-", "--sparse", "--xattrs", "-C", str(tmp_path), "./etc/vzdump/pct.conf",
                              "./sparse.img"], capture_output=True, check=True).stdout
    read = lxc.read(io.BytesIO(archive))
    assert read.members == 2 and read.data_bytes < 1 << 20  # the holes are not stored
    sparse = next(m for m in tarfile.open(fileobj=io.BytesIO(archive)) if m.name == "./sparse.img")
    assert sparse.pax_headers["GNU.sparse.major"] == "1"
    start = sparse.offset_data - 512  # tarfile's data offset is past the one-record map
    assert re.match(rb"[1-8]\n\d+\n", archive[start:start + 20])  # a few data regions, then their offsets
    damaged = archive[:start] + b"9" + archive[start + 1:]  # the map's entry count
    with pytest.raises(lxc.TarError, match="sparse map"):
        lxc.read(io.BytesIO(damaged))
