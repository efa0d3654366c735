"""The manifest's two parsers, property-tested: rsync's itemized lines (real rsync's, against lstat and xxHash) and the
previous manifest's rows read in step by one part of a parallel copy (against json.loads)."""

import os
import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bak import manifest
from bak.methods.rsync import tree_items
from bak.run.local import LocalRunner
from conftest import need
from test_files import entries_of

EXAMPLES = int(os.environ.get("BAK_FUZZ_EXAMPLES", "200"))
# Any byte but '/' and NUL: control characters, quotes, backslashes, " -> ", bytes that are not UTF-8.
NAME = st.binary(min_size=1, max_size=24).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")).filter(
    lambda b: b not in (b".", b".."))


@settings(max_examples=max(EXAMPLES // 4, 20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAME, min_size=1, max_size=6, unique=True), link_to=NAME, data=st.binary(max_size=300),
       mode=st.sampled_from([0o600, 0o644, 0o750, 0o4755, 0o1777]))
def test_rsyncs_listing_of_any_names_is_what_lstat_sees(tmp_path, names, link_to, data, mode):
    need("rsync")
    root = os.path.join(os.fsencode(tmp_path), b"tree")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, b"sub"))
    for index, name in enumerate(names):
        if index % 3 == 2:
            os.symlink(link_to, os.path.join(root, b"sub", name))
        else:
            path = os.path.join(root, b"sub" if index % 3 else b"", name)
            with open(path, "wb") as handle:
                handle.write(data + name)
            os.chmod(path, mode)
    listed = {item.path: item.row("xxh128") for item in tree_items(LocalRunner(), os.fsdecode(root), "xxh128")}
    assert listed.pop(".")["type"] == "d"
    assert listed == entries_of(os.fsdecode(root))  # lstat, readlink and the xxHash library, read apart


PATH_TEXT = st.text(st.sampled_from(list('ab/"\\ é\n-\udce9>')), min_size=1, max_size=12).filter(
    lambda p: not p.startswith("/") and "//" not in p and not p.endswith("/"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(paths=st.lists(PATH_TEXT, min_size=1, max_size=30, unique=True), pick=st.randoms())
def test_one_part_reads_exactly_its_own_rows_of_the_previous_manifest(paths, pick):
    """Rows of every top-level name, written as a snapshot writes them: a part given some top-level names
    finds each of its files' rows, in order, and never one of another part."""
    lines = []
    for index, path in enumerate(paths):
        item = manifest.Item("f", path, index, 1_700_000_000 + index, 0o644, 0, 0, f"{index:032x}", None, False)
        line = item.row_line("xxh128")
        assert manifest.json.loads(line)["path"] == path  # the independent reader agrees on the name
        lines.append(line.encode("ascii"))
    tops = sorted({path.split("/", 1)[0] for path in paths})
    mine = frozenset(pick.sample(tops, pick.randint(0, len(tops))))
    previous = manifest.PreviousFiles(iter(lines), "xxh128", mine)
    for index, path in enumerate(paths):
        if path.split("/", 1)[0] in mine:
            assert previous.get(path) == (index, 1_700_000_000 + index, f"{index:032x}")
    others = manifest.PreviousFiles(iter(lines), "xxh128", mine)
    assert all(others.get(path) is None for path in paths if path.split("/", 1)[0] not in mine)
