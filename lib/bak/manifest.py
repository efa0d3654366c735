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

import calendar
import json
import queue
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

VERSION = 2
# %i itemize (11 chars), %l length, %M mtime, %B permissions, %U/%G numeric owner, %C whole-file checksum
# (fixed width, blank when unknown), then the name, and " -> target" for a symlink. rsync escapes
# control characters anywhere in the line as \#ooo (and a backslash before '#'), so one line is one entry.
OUT_FORMAT = "%i %l %M %B %U %G %C %n%L"
CHECKSUM_WIDTH = {"xxh128": 32, "md5": 32}
_ESCAPE = re.compile(rb"\\#([0-7]{3})")
TYPES = {ord("f"): "f", ord("d"): "d", ord("L"): "l", ord("D"): "device", ord("S"): "special"}
_DAYS: dict[bytes, int] = {}
_MODES: dict[bytes, int] = {}


def unescape(raw: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), raw) if b"\\#" in raw else raw


def fs_text(raw: bytes) -> str:
    """A file name as Python's os functions spell it: undecodable bytes survive (surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape")


def mode_bits(text: bytes) -> int:
    """`rwsr-x--T` -> 0o4750 (rsync's %B, as ls shows permissions)."""
    mode = _MODES.get(text)
    if mode is None:
        mode = 0
        for index, char in enumerate(text.decode()):
            shift = 8 - index
            if char in "rwxst":
                mode |= 1 << shift
            if char in "sS":
                mode |= 0o4000 if index == 2 else 0o2000
            if char in "tT":
                mode |= 0o1000
        _MODES[text] = mode
    return mode


def epoch(stamp: bytes) -> int:
    """rsync's `YYYY/MM/DD-HH:MM:SS` (TZ=UTC) as seconds since the epoch; days are computed once each."""
    base = _DAYS.get(stamp[:10])
    if base is None:
        base = _DAYS[stamp[:10]] = calendar.timegm((int(stamp[:4]), int(stamp[5:7]), int(stamp[8:10]), 0, 0, 0))
    return base + int(stamp[11:13]) * 3600 + int(stamp[14:16]) * 60 + int(stamp[17:19])


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
        return json.loads(self.row_line(algorithm))

    def row_line(self, algorithm: str) -> str:
        """The manifest line, written without the generic JSON encoder (it is the hot path at 500,000 files)."""
        head = (f'{{"path": {_quote(self.path)}, "type": "{self.type}", "mode": {self.mode}, "uid": {self.uid}, '
                f'"gid": {self.gid}')
        if self.type == "f":
            checksum = f'"{self.checksum}"' if self.checksum else "null"
            return f'{head}, "size": {self.size}, "mtime": {self.mtime}, "{algorithm}": {checksum}}}\n'
        if self.type == "l":
            return f'{head}, "target": {_quote(self.target or "")}}}\n'
        return head + "}\n"


def _line_pattern(width: int) -> re.Pattern:
    """OUT_FORMAT's fields in one match: itemize, length, mtime, permissions, uid, gid, checksum, name."""
    pattern = _LINE_PATTERNS.get(width)
    if pattern is None:
        pattern = _LINE_PATTERNS[width] = re.compile(
            rb"([<>ch.])([fdLDS]).{9} (\d+) (\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d) ([-rwxsStT]{9}) (\d+) (\d+) (.{%d}) (.+)"
            % width, re.S)
    return pattern


_LINE_PATTERNS: dict[int, re.Pattern] = {}


def parse_item(line: bytes, width: int) -> Item | None:
    """One line of rsync's output in OUT_FORMAT, or None for any other line (stats, notices)."""
    match = _line_pattern(width).fullmatch(line)
    if match is None:
        return None
    update, kind_code, length, stamp, permissions, uid, gid, checksum, name = match.groups()
    kind = TYPES[kind_code[0]]
    target = link_text = None
    if kind == "l":
        if name.count(b" -> ") > 1:
            link_text = fs_text(unescape(name))
        name, _, target_raw = name.partition(b" -> ")
        target = fs_text(unescape(target_raw))
    path = fs_text(unescape(name)).rstrip("/") or "."
    return Item(kind, path, int(length), epoch(stamp), mode_bits(permissions), int(uid), int(gid),
                checksum.strip().decode() or None, target, update in b"<>", link_text)


def link_splits(text: str) -> list[tuple[str, str]]:
    """Every (name, target) that `name -> target` could mean when " -> " occurs more than once."""
    parts = text.split(" -> ")
    return [(" -> ".join(parts[:k]), " -> ".join(parts[k:])) for k in range(1, len(parts))]


_quote = json.encoder.encode_basestring_ascii  # C-accelerated; lone surrogates (undecodable names) become \udcXX
# A file row as row_line writes it (and json.dumps did before): read back without the generic decoder.
_FILE_ROW = re.compile(rb'\{"path": ("(?:[^"\\]|\\.)*"), "type": "f", "mode": \d+, "uid": \d+, "gid": \d+, '
                       rb'"size": (\d+), "mtime": (-?\d+), "(\w+)": (?:"(\w+)"|null)\}\n?')


class PreviousFiles:
    """The previous snapshot's file rows, read in step with rsync's listing of the new one.

    rsync lists an unchanged tree in the same order every time, and new or removed entries do not
    reorder the others: a window of rows read ahead finds each unchanged file without holding the
    whole manifest (500,000 rows) in memory. A file not found there is "unknown" and is hashed.
    """

    WINDOW = 8192
    REACH = 16 * WINDOW  # how far past a run of deleted files a miss may look

    def __init__(self, lines, algorithm: str, tops: frozenset[str] | None = None):
        """`tops`: only rows under these top-level names (one of several rsyncs copying a part of the tree)."""
        self._lines = iter(lines)
        self._algorithm = algorithm.encode()
        self._ahead: OrderedDict[str, tuple[int, int, str | None]] = OrderedDict()
        self._tops = tops
        self._quoted_tops = None if tops is None else {_quote(top)[1:-1].encode("ascii") for top in tops}

    def _elsewhere(self, raw: bytes) -> bool:
        """A row under a top-level name of another part, told from its bytes without parsing it."""
        if self._quoted_tops is None or not raw.startswith(b'{"path": "'):
            return False
        end = raw.find(b'"', 10)
        slash = raw.find(b"/", 10, end)
        top = raw[10:slash if slash != -1 else end]
        return b"\\" not in top and top not in self._quoted_tops  # an escaped name is parsed, then checked

    def _read(self) -> bool:
        for raw in self._lines:
            if self._elsewhere(raw):
                continue
            match = _FILE_ROW.fullmatch(raw)
            if match is None:
                continue
            literal, size, mtime, algorithm, checksum = match.groups()
            if algorithm != self._algorithm:
                continue
            path = json.loads(literal) if b"\\" in literal else literal[1:-1].decode("utf-8", "surrogateescape")
            if self._tops is not None and path.split("/", 1)[0] not in self._tops:
                continue
            self._ahead[path] = (int(size), int(mtime), checksum.decode() if checksum else None)
            return True
        return False

    def get(self, path: str) -> tuple[int, int, str | None] | None:
        """(size, mtime, checksum) of `path` in the previous manifest, or None."""
        while path not in self._ahead and len(self._ahead) < self.WINDOW and self._read():
            pass
        reach = self.REACH
        while path not in self._ahead and reach and self._read():
            self._ahead.popitem(last=False)  # past a long run of removed files
            reach -= 1
        if path not in self._ahead:
            return None
        while True:
            key, value = self._ahead.popitem(last=False)
            if key == path:
                return value


class ListingReader:
    """Feed it rsync's stdout chunk by chunk while rsync runs; it keeps the entries and the other lines.

    Lines are parsed on a thread of their own: the thread draining rsync's stdout only hands chunks
    over, so rsync never waits on a full pipe while Python parses (at 500,000 files that wait was
    most of bak's overhead). close() waits for the last line and re-raises what a handler raised."""

    def __init__(self, width: int, on_item=None):
        self.width = width
        self.items: list[Item] = []
        self.other: list[bytes] = []
        self._pending = b""
        self._on_item = on_item
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        self._error: BaseException | None = None
        self._parser = threading.Thread(target=self._parse, daemon=True)
        self._parser.start()

    def feed(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def _parse(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._error is not None:
                continue  # drain, so the feeding thread never blocks
            try:
                *lines, self._pending = (self._pending + chunk).split(b"\n")
                for line in lines:
                    self._line(line)
            except BaseException as exc:  # raised again by close(), in the caller's thread
                self._error = exc

    def close(self) -> None:
        if self._parser.is_alive():
            self._chunks.put(None)
            self._parser.join()
        if self._error is not None:
            raise self._error
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


def header(created_at: datetime, algorithm: str, owners: bool, files: int, entries: int, size: int,
           added: int | None) -> dict:
    """What a listing needs without reading the rows: the snapshot's time, sizes and checksum."""
    return {"bak_manifest": VERSION, "created_at": created_at.isoformat(), "checksum": algorithm, "owners": owners,
            "files": files, "entries": entries, "size": size, "added": added}


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
