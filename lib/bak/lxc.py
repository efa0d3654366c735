"""vzdump container archives (`vzdump-lxc-*.tar[.zst|.gz]`), read in one streamed pass.

vzdump runs GNU tar with `--xattrs --acls --sparse` (pve-container VZDump/LXC.pm), so the archive is
POSIX pax: a member may be preceded by a pax header (`x`) whose records override its path and size,
and a sparse file is stored as pax sparse 1.0 (a decimal map, padded to 512 bytes, then the data).
Its first member is `./etc/vzdump/pct.conf`, which `pct restore` reads the container's config from.

The check reads every header (checksum), every member's data to its declared size, each sparse
map against the data stored, and the end-of-archive marker: a tar cut anywhere, even at a member
boundary, is caught. tar has no data checksum; corrupted data is caught by the compressor's
(zstd frame checksum, gzip CRC) and by the copy's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from bak.errors import VerifyFailed
from bak.streams import read_upto

RECORD = 512
FIRST_MEMBER = "./etc/vzdump/pct.conf"
_META_LIMIT = 1 << 20  # pax records, long names and pct.conf are small; anything larger is damage
_SKIP_PIECE = 1 << 20
_ZERO = bytes(RECORD)
_EXTENDED = (b"x", b"g", b"L", b"K")  # pax header, pax global header, GNU long name, GNU long link name
_REGULAR = (b"0", b"\0", b"7")
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, folders, fifos: tar stores no data for them


class TarError(VerifyFailed):
    code = "tar_invalid"


@dataclass
class ContainerArchive:
    config: str = ""
    members: int = 0
    data_bytes: int = 0


def parse_number(field: bytes, where: str) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (high bit set) for big values."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"{where}: numeric field {field!r} is not octal") from None


def checksum_ok(header: bytes, where: str) -> bool:
    """The sum of the header bytes with the checksum field read as spaces (unsigned, or signed as old tars did)."""
    stored = parse_number(header[148:156], where)
    blanked = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blanked)
    signed = unsigned - 256 * sum(1 for byte in blanked if byte > 127)
    return stored in (unsigned, signed)


def parse_pax(data: bytes, where: str) -> dict[str, str]:
    """Records `LENGTH KEY=VALUE\\n`, LENGTH counting the whole record."""
    records, position = {}, 0
    while position < len(data) and data[position:position + 1] != b"\0":
        length_text, space, _ = data[position:position + 20].partition(b" ")
        if not space or not length_text.isdigit():
            raise TarError(f"{where}: malformed pax record at offset {position}")
        record = data[position: position + int(length_text)]
        if len(record) != int(length_text) or not record.endswith(b"\n") or b"=" not in record:
            raise TarError(f"{where}: malformed pax record at offset {position}")
        key, _, value = record[len(length_text) + 1:-1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        position += len(record)
    return records


class _Reader:
    """The stream with its position, so every message can say where."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.offset = 0

    def upto(self, size: int) -> bytes:
        data = read_upto(self.stream, size)
        self.offset += len(data)
        return data

    def exact(self, size: int, what: str) -> bytes:
        data = self.upto(size)
        if len(data) != size:
            raise TarError(f"truncated archive: {what} ends after {len(data)} of {size} bytes")
        return data

    def skip(self, size: int, what: str) -> None:
        done = 0
        while done < size:
            piece = self.stream.read(min(_SKIP_PIECE, size - done))
            if not piece:
                raise TarError(f"truncated archive: {what} ends after {done} of {size} bytes")
            done += len(piece)
        self.offset += size

    def member_data(self, size: int, what: str, keep: int = 0) -> bytes:
        """Reads a member's data and its padding; returns the first `keep` bytes."""
        kept = self.exact(min(keep, size), what) if keep else b""
        self.skip(size - len(kept), what)
        self.skip(-size % RECORD, f"{what} padding")
        return kept


def _sparse_map(reader: _Reader, size: int, what: str) -> int:
    """Pax sparse 1.0: reads the map (a count, then offset and length pairs, one decimal number per
    line, padded to 512 bytes) and checks that the lengths add up to the data stored after it.
    Returns the map's size."""
    text, numbers, wanted = b"", [], 1
    while len(numbers) < wanted:
        if len(text) + RECORD > size:
            raise TarError(f"{what}: sparse map runs past the member's data")
        text += reader.exact(RECORD, f"{what} sparse map")
        for line in text.split(b"\n")[len(numbers):-1]:
            if not line.isdigit():
                raise TarError(f"{what}: sparse map entry {line[:20]!r} is not a number")
            numbers.append(int(line))
            wanted = 1 + 2 * numbers[0]
            if len(numbers) == wanted:
                break
    stored = sum(numbers[2::2])
    if len(text) + stored != size:
        raise TarError(f"{what}: sparse map lists {stored} data bytes, the member stores {size - len(text)}")
    return len(text)


def read(stream: BinaryIO, full: bool = True) -> ContainerArchive:
    """`full` reads to the end-of-archive marker; without it the read stops after pct.conf."""
    reader = _Reader(stream)
    archive = ContainerArchive()
    pending: dict[str, str] = {}
    while True:
        start = reader.offset
        header = reader.upto(RECORD)
        if not header:
            raise TarError(f"truncated archive: it ends at byte {start}, after {archive.members} members, "
                           "without the end-of-archive marker")
        where = f"header at byte {start}"
        if len(header) < RECORD:
            raise TarError(f"truncated archive: {where} ends after {len(header)} of {RECORD} bytes")
        if header == _ZERO:
            _end_of_archive(reader, start)
            return archive
        if not checksum_ok(header, where):
            raise TarError(f"{where}: wrong header checksum")
        kind = header[156:157]
        if kind in _EXTENDED:
            size = parse_number(header[124:136], where)
            if size > _META_LIMIT:
                raise TarError(f"{where}: {size}-byte extended header")
            data = reader.member_data(size, f"extended header at byte {start}", keep=size)
            if kind == b"x":
                pending.update(parse_pax(data, where))
            elif kind == b"L":
                pending["path"] = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue  # a global header (g) or a long link name (K) changes nothing checked here
        name = pending.get("path") or _header_name(header)
        what = f"member {name!r} (byte {start})"
        if archive.members == 0 and (name != FIRST_MEMBER or kind not in _REGULAR):
            raise TarError(f"first member is {name!r}, not the file {FIRST_MEMBER}: not a vzdump container archive")
        size = 0 if kind in _NO_DATA else _pax_size(pending, header, where)
        if size < 0:
            raise TarError(f"{where}: negative size {size}")
        if kind == b"S":
            _skip_gnu_sparse_headers(reader, header, what)
        map_size = _sparse_map(reader, size, what) if pending.get("GNU.sparse.major") == "1" else 0
        kept = reader.member_data(size - map_size, what, keep=_META_LIMIT if archive.members == 0 else 0)
        if archive.members == 0:
            archive.config = kept.decode("utf-8", "replace")
            if not any(line.startswith("rootfs:") for line in archive.config.splitlines()):
                raise TarError(f"{FIRST_MEMBER} names no rootfs: pct restore could not recreate the container")
        archive.members += 1
        archive.data_bytes += size
        pending = {}
        if not full:
            return archive


def _pax_size(pending: dict[str, str], header: bytes, where: str) -> int:
    """The member's stored size: a pax `size` record wins over the header field (files over 8 GiB)."""
    if "size" not in pending:
        return parse_number(header[124:136], where)
    if not pending["size"].isdigit():
        raise TarError(f"{where}: pax size {pending['size'][:20]!r} is not a number")
    return int(pending["size"])


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix field before the name (GNU uses it for times)
        prefix = header[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name if prefix else name
    return name.decode("utf-8", "replace")


def _skip_gnu_sparse_headers(reader: _Reader, header: bytes, what: str) -> None:
    """Old GNU sparse (`S`): more sparse entries follow in extension headers while `isextended` is set."""
    extended = header[482]
    while extended:
        extended = reader.exact(RECORD, f"{what} sparse extension header")[504]


def _end_of_archive(reader: _Reader, start: int) -> None:
    """Two zero records end the archive; tar pads the rest of its last block with zeros."""
    if reader.exact(RECORD, f"end-of-archive marker at byte {start}") != _ZERO:
        raise TarError(f"a lone zero record at byte {start}: damaged archive")
    while piece := reader.stream.read(_SKIP_PIECE):
        if piece.count(0) != len(piece):
            raise TarError(f"data after the end-of-archive marker (byte {start})")
