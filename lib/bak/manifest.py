"""What a snapshot folder must give back, entry by entry: type, mode, size, mtime, checksum, link target, owner.

The rows come from rsync's own itemized output while it copies (`-ii` lists every entry,
unchanged ones included) and each transferred file's whole-file checksum is the one rsync
computed and checked while writing it (`%C`): nothing is read a second time. Verify and drills
ask rsync for the same listing of the stored or restored tree (`--dry-run --checksum`, run on
the host that holds it) and compare.

Manifest file: JSON lines. The first is a header (`{"bak_manifest": 2, ...}`); each other line
is an entry. Version 1 manifests (no header; regular files with sha256 only) are still read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

VERSION = 2
# %i itemize (11 chars), %l length, %M mtime, %B permissions, %U/%G numeric owner, %C whole-file checksum
# (fixed width, blank when unknown), then the name, and " -> target" for a symlink. rsync escapes
# control characters anywhere in the line as \#ooo (and a backslash before '#'), so one line is one entry.
OUT_FORMAT = "%i %l %M %B %U %G %C %n%L"
CHECKSUM_WIDTH = {"xxh128": 32, "md5": 32}
_ITEM = re.compile(rb"^([<>ch.*][fdLDS][ .+?a-zA-Z]{9}) (\d+) (\d{4})/(\d\d)/(\d\d)-(\d\d):(\d\d):(\d\d) "
                   rb"([-rwxsStT]{9}) (\d+) (\d+) ")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")
TYPES = {b"f": "f", b"d": "d", b"L": "l", b"D": "device", b"S": "special"}


def unescape(raw: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), raw)


def fs_text(raw: bytes) -> str:
    """A file name as Python's os functions spell it: undecodable bytes survive (surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape")


def mode_bits(text: bytes) -> int:
    """`rwsr-x--T` -> 0o4750 (rsync's %B, as ls shows permissions)."""
    mode = 0
    for index, char in enumerate(text.decode()):
        shift = 8 - index
        if char in "rwxst":
            mode |= 1 << shift
        if char in "sS":
            mode |= 0o4000 if index == 2 else 0o2000
        if char in "tT":
            mode |= 0o1000
    return mode


@dataclass(slots=True)
class Item:
    """One entry of rsync's itemized listing."""

    type: str            # f, d, l, device, special
    path: str            # relative, no trailing slash; "." for the root
    size: int
    mtime: int           # seconds since the epoch (rsync runs with TZ=UTC)
    mode: int
    uid: int
    gid: int
    checksum: str | None
    target: str | None   # a symlink's target
    written: bool        # transferred now (its checksum is then rsync's own)
    # A symlink line holding " -> " more than once: where the name ends must be asked of the tree (resolve_link).
    link_text: str | None = None

    def row(self, algorithm: str) -> dict:
        row = {"path": self.path, "type": self.type, "mode": self.mode, "uid": self.uid, "gid": self.gid}
        if self.type == "f":
            row.update(size=self.size, mtime=self.mtime)
            row[algorithm] = self.checksum
        elif self.type == "l":
            row["target"] = self.target
        return row


def parse_item(line: bytes, width: int) -> Item | None:
    """One line of rsync's output in OUT_FORMAT, or None for any other line (stats, notices)."""
    match = _ITEM.match(line)
    if not match:
        return None
    rest = line[match.end():]
    checksum = rest[:width].strip().decode() or None
    name = rest[width + 1:]
    kind = TYPES[match.group(1)[1:2]]
    target = link_text = None
    if kind == "l":
        if name.count(b" -> ") > 1:
            link_text = fs_text(unescape(name))
        name, _, target_raw = name.partition(b" -> ")
        target = fs_text(unescape(target_raw))
    path = fs_text(unescape(name)).rstrip("/") or "."
    y, mo, d, h, mi, s = (int(match.group(i)) for i in range(3, 9))
    mtime = int(datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc).timestamp())
    return Item(kind, path, int(match.group(2)), mtime, mode_bits(match.group(9)), int(match.group(10)),
                int(match.group(11)), checksum, target, match.group(1)[:1] in b"<>", link_text)


def link_splits(text: str) -> list[tuple[str, str]]:
    """Every (name, target) that `name -> target` could mean when " -> " occurs more than once."""
    parts = text.split(" -> ")
    return [(" -> ".join(parts[:k]), " -> ".join(parts[k:])) for k in range(1, len(parts))]


class ListingReader:
    """Feed it rsync's stdout chunk by chunk while rsync runs; it keeps the entries and the other lines."""

    def __init__(self, width: int, on_item=None):
        self.width = width
        self.items: list[Item] = []
        self.other: list[bytes] = []
        self._pending = b""
        self._on_item = on_item

    def feed(self, chunk: bytes) -> None:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = b""

    def _line(self, line: bytes) -> None:
        item = parse_item(line, self.width)
        if item is None:
            self.other.append(line)
        elif self._on_item is None or self._on_item(item):
            self.items.append(item)

    def text(self) -> str:
        return b"\n".join(self.other).decode("utf-8", "replace")


def header(created_at: datetime, algorithm: str, owners: bool) -> dict:
    return {"bak_manifest": VERSION, "created_at": created_at.isoformat(), "checksum": algorithm, "owners": owners}


def dumps(head: dict, rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in [head, *rows]).encode()


@dataclass
class Manifest:
    head: dict
    rows: dict[str, dict]

    @property
    def version(self) -> int:
        return self.head.get("bak_manifest", 1)

    @property
    def algorithm(self) -> str:
        return self.head.get("checksum", "sha256")

    def files(self) -> dict[str, dict]:
        return {p: r for p, r in self.rows.items() if r.get("type", "f") == "f"}


def loads(data: bytes) -> Manifest:
    """A manifest file; raises ValueError when it is not one."""
    rows: dict[str, dict] = {}
    head: dict = {}
    for number, line in enumerate(data.decode("utf-8", "surrogateescape").splitlines()):
        if not line:
            continue
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError(f"line {number + 1} is not an object")
        if number == 0 and "bak_manifest" in row:
            head = row
            continue
        if not isinstance(row.get("path"), str):
            raise ValueError(f"line {number + 1} has no path")
        rows[row["path"]] = row
    return Manifest(head, rows)


def differences(expected: Manifest, found: list[Item], *, owners: bool, checksums: bool = True) -> dict[str, list[str]]:
    """What a tree lacks, has in excess or has changed, against its manifest (paths per kind)."""
    algorithm = expected.algorithm
    by_path = {item.path: item for item in found}
    legacy = expected.version < 2
    wanted = expected.files() if legacy else expected.rows
    missing = sorted(p for p in wanted if p not in by_path)
    unexpected = sorted(p for p, item in by_path.items()
                        if p not in wanted and not (legacy and item.type != "f") and p != ".")
    changed = []
    for path, row in wanted.items():
        item = by_path.get(path)
        if item is None:
            continue
        why = _change(row, item, algorithm, owners=owners and not legacy, checksums=checksums, legacy=legacy)
        if why:
            changed.append(f"{path} ({why})")
    return {"missing": missing, "unexpected": unexpected, "changed": sorted(changed)}


def _change(row: dict, item: Item, algorithm: str, *, owners: bool, checksums: bool, legacy: bool) -> str | None:
    kind = row.get("type", "f")
    if kind != item.type:
        return f"was {kind}, is {item.type}"
    if kind == "l":
        return None if row.get("target") == item.target else f"link to {item.target!r}, was {row.get('target')!r}"
    if not legacy and kind != "l" and row.get("mode") != item.mode:
        return f"mode {item.mode:o}, was {row.get('mode', 0):o}"
    if owners and (row.get("uid"), row.get("gid")) != (item.uid, item.gid):
        return f"owner {item.uid}:{item.gid}, was {row.get('uid')}:{row.get('gid')}"
    if kind == "f":
        if row.get("size") != item.size:
            return f"size {item.size}, was {row.get('size')}"
        if row.get("mtime") != item.mtime:
            return "modification time differs"
        if checksums and row.get(algorithm) != item.checksum:
            return "content differs"
    return None
