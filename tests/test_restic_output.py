"""What restic answers, parsed: property tests over whatever its JSON and text could hold."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bak.stores import resticcmd as cmd

HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
NAME = st.from_regex(r"pg-[a-z]{1,8}-2026-11-2[0-9]_1[0-9]{5}\.dump", fullmatch=True)
TIME = st.integers(1_700_000_000, 1_900_000_000)


def row(ident, when, paths, tags):
    from datetime import datetime, timezone

    stamp = datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    return {"time": stamp, "paths": paths, "hostname": "bak", "tags": tags, "id": ident, "short_id": ident[:8]}


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                       max_leaves=20)


@given(JSONISH)
@settings(max_examples=300, deadline=None)
def test_any_json_gives_snapshots_or_nothing_never_an_error(value):
    for snapshot in cmd.parse_snapshots(json.dumps(value)):
        assert cmd.TAG in snapshot.tags and snapshot.paths


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_text_is_parsed_without_an_error(text):
    cmd.parse_snapshots(text)
    cmd.parse_backup(text)
    cmd.parse_check(text)
    cmd.failure_kind(text)
    cmd.lock_holder(text)
    cmd.parse_time(text)


@st.composite
def uploads(draw):
    """Artifacts as bak uploads them: streams, then seals over one or several of them; a killed run leaves
    some unsealed."""
    rows, streams, expected = [], {}, {}
    names = draw(st.lists(NAME, min_size=1, max_size=8, unique=True))
    ids = iter(draw(st.lists(HEX, min_size=2 * len(names), max_size=2 * len(names), unique=True)))
    for index, name in enumerate(names):
        token = f"{index:016x}"
        streams[name] = (token, next(ids))
        rows.append(row(streams[name][1], draw(TIME), [f"/postgresql/pg/{name}"], ["bak", f"upload={token}"]))
    sealed = [n for n in names if draw(st.booleans())]
    cut = sorted(draw(st.sets(st.integers(1, max(1, len(sealed) - 1)), max_size=3))) if sealed else []
    batches = [sealed[a:b] for a, b in zip([0, *cut], [*cut, len(sealed)]) if sealed[a:b]]
    for batch in batches:
        values = []
        for name in batch:
            size, digest = draw(st.integers(0, 1 << 40)), draw(HEX)
            values.append((streams[name][0], size, digest, [".meta.json"]))
            expected[name] = (size, digest)
        seal_id = next(ids)
        rows.append(row(seal_id, draw(TIME), [f"/postgresql/pg/{batch[0]}.sidecars.tar"], ["bak", *cmd.seal_tags(values)]))
        for name in batch:
            expected[name] += (seal_id, frozenset(streams[n][0] for n in batch))
    return draw(st.permutations(rows)), streams, expected


@given(uploads(), st.data())
@settings(max_examples=200, deadline=None)
def test_a_stream_counts_only_once_sealed_and_a_seal_goes_with_the_last_upload_it_seals(case, data):
    rows, streams, expected = case
    complete, leftovers = cmd.layout(cmd.parse_snapshots(json.dumps(rows)))
    assert {a.name for a in complete} == set(expected)
    assert {a.name for a in leftovers} == set(streams) - set(expected)
    for artifact in complete:
        size, digest, seal_id, members = expected[artifact.name]
        assert artifact.folder == "postgresql/pg" and (artifact.size, artifact.sha256) == (size, digest)
        assert artifact.sidecars == [".meta.json"] and artifact.seal == seal_id
        assert artifact.ids == [streams[artifact.name][1]] + ([seal_id] if len(members) == 1 else [])
    chosen = data.draw(st.lists(st.sampled_from(complete), unique_by=lambda a: a.name)) if complete else []
    forgotten = set(cmd.forget_ids(chosen))
    tokens = {a.token for a in chosen}
    seals = {expected[a.name][2] for a in chosen if expected[a.name][3] <= tokens}
    assert forgotten == {streams[a.name][1] for a in chosen} | seals


def test_a_seal_without_its_stream_and_a_tree_snapshot():
    seal = row("a" * 64, 1_800_000_000, ["/postgresql/pg/x.dump.sidecars.tar"],
               ["bak", *cmd.seal_tags([("1", 5, "b" * 64, [])])])
    tree = row("c" * 64, 1_800_000_000, ["/nfs/rsync/t/s", "/nfs/rsync/t/s.manifest"], ["bak", "tree", "path=rsync/t/s", "size=5"])
    foreign = row("d" * 64, 1_800_000_000, ["/home"], ["nightly"])
    complete, leftovers = cmd.layout(cmd.parse_snapshots(json.dumps([seal, tree, foreign])))
    assert [(a.name, a.complete) for a in leftovers] == [("x.dump", False)]
    [snapshot] = complete
    assert (snapshot.folder, snapshot.name, snapshot.tree, snapshot.size) == ("rsync/t", "s", True, 5)
    assert cmd.tree_root(snapshot) == "/nfs/rsync/t/s" and cmd.manifest_path(snapshot) == "/nfs/rsync/t/s.manifest"
    assert cmd.restored_root("/scratch", "/nfs/rsync/t/s") == "/scratch/nfs/rsync/t/s"


def test_restic_time_with_nanoseconds_and_zones():
    assert cmd.parse_time("2026-12-01T15:51:51.463906358Z") == 1796140311.463906358
    assert cmd.parse_time("2026-12-01T16:51:51+01:00") == 1796140311.0
    assert cmd.parse_time("2026-12-01 15:51:51") is None


def test_backup_summary_check_and_failures():
    out = '{"message_type":"status","percent_done":0}\n{"message_type":"summary","total_bytes_processed":3,"snapshot_id":"0aa1c96a"}\n'
    assert cmd.parse_backup(out)["snapshot_id"] == "0aa1c96a"
    assert cmd.parse_check("read group #3 of 2 data packs (out of total 4 packs in 3 groups)\nno errors were found") == {
        "errors": False, "group": 3, "groups": 3, "packs_read": 2, "packs_total": 4}
    assert cmd.parse_check("Fatal: repository contains errors")["errors"]
    locked = ("Fatal: unable to create lock in backend: repository is already locked exclusively by PID 4242 on nas "
              "by root (UID 0, GID 0)\nlock was created at 2026-12-01 16:28:43 (7s ago)")
    assert cmd.failure_kind(locked) == "locked"
    assert cmd.lock_holder(locked) == {"pid": 4242, "host": "nas", "user": "root", "exclusive": True}
    assert cmd.failure_kind("Fatal: wrong password or no key found") == "wrong_password"
    assert cmd.failure_kind("Is there a repository at the following location?") == "no_repository"
    assert cmd.failure_kind('Fatal: unable to open config file: client.Head: Head "http://127.0.0.1:1/r/config": '
                            "dial tcp 127.0.0.1:1: connect: connection refused\nIs there a repository at the "
                            "following location?") == "unreachable"
    assert cmd.failure_kind("Host key verification failed.\r\nFatal: unable to open repository") == "host_key"


@given(st.integers(1, 9999), st.lists(st.booleans(), min_size=1, max_size=80))
@settings(max_examples=200, deadline=None)
def test_the_rotation_reads_every_part_once_per_cycle(groups, passes):
    """Checks that fail are read again: the next part follows the last one that passed."""
    last, read, history = None, [], []
    for index, passed in enumerate(passes):
        part = cmd.next_part(last, groups)
        history.insert(0, (f"t{index:03d}", part[0], groups, passed))
        if passed:
            last = part
            read.append(part[0])
    assert read == [(i % groups) + 1 for i in range(len(read))]
    covered = cmd.coverage([(t, p, g) for t, p, g, ok in history if ok])
    passed_times = [t for t, _, _, ok in history if ok]
    assert covered == (passed_times[groups - 1] if len(passed_times) >= groups else None)


def test_a_changed_cycle_starts_again():
    assert cmd.next_part((7, 30), 10) == (1, 10)
    assert cmd.next_part(None, 30) == (1, 30)
    assert cmd.coverage([("t2", 1, 2), ("t1", 2, 3)]) is None
