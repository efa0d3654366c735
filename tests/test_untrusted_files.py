"""What bak reads from a destination is untrusted input (issue 30, items 8, 9 and 13): a file without its
sidecars is not a backup, an edited .meta.json fails a drill instead of crashing it, a tarball that restore
would refuse fails its verify, and a report over a remote restic destination answers."""

import gzip
import hashlib
import io
import json
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bak import naming
from conftest import run_cli, write_config
from test_hostile_input import assert_clean, lab
from test_pg import PASSWORD as PG_PASSWORD
from test_pg import lab_config, pg  # noqa: F401  (the module fixture: a database with tables)


# --- item 8: a file without its sidecars is not a backup -------------------------------------------------
def test_a_dump_dropped_without_sidecars_is_foreign_never_the_newest(bak_home):
    data = lab(bak_home)
    data["targets"].append({"name": "db", "method": "pg_dump", "destinations": ["here"], "pg_dump": {"database": "app"}})
    write_config(bak_home / "config.yaml", data)
    folder = bak_home / "dest" / "postgresql" / "db"
    folder.mkdir(parents=True)
    good = naming.pg_dump_name("app", __import__("datetime").datetime(2026, 1, 1, 3, 0, 0))
    (folder / good).write_bytes(b"PGDMP" + b"\0" * 100)
    (folder / f"{good}.sha256").write_text(f"{hashlib.sha256(b'PGDMP' + bytes(100)).hexdigest()}  {good}\n")
    garbage = naming.pg_dump_name("app", __import__("datetime").datetime.now().replace(microsecond=0))
    (folder / garbage).write_bytes(b"garbage!")  # 8 bytes, no .sha256: dropped there, or a run cut short by hand
    listed = run_cli("list", "--target", "db")
    assert listed.code == 0
    assert [b["name"] for b in listed.envelope["result"]["backups"]] == [good]
    assert {"store": "here", "folder": "postgresql/db", "name": garbage} in listed.envelope["result"]["foreign"]
    status = run_cli("status").envelope["result"]["targets"]
    assert next(t for t in status if t["target"] == "db")["newest"]["name"] == good
    verified = run_cli("verify", "--target", "db")  # the newest backup of each destination: never the garbage ...
    rows = {r["name"]: r for r in verified.envelope["result"]["checked"]}
    assert set(rows) == {good, garbage}  # ... which verify names as what it is
    assert not rows[garbage]["ok"] and "not a complete backup" in rows[garbage]["error"]
    pruned = run_cli("prune", "--dry-run", "--force")
    assert garbage not in json.dumps(pruned.envelope["result"]["targets"][1]["stores"][0]["decisions"])
    assert (folder / garbage).read_bytes() == b"garbage!"  # foreign: listed, never pruned


def test_a_snapshot_folder_without_its_manifest_is_foreign(bak_home):
    lab(bak_home)
    assert run_cli("create").code == 0
    stray = bak_home / "dest" / "rsync" / "files" / "rsync-files-2030-01-01"
    stray.mkdir()
    (stray / "a.txt").write_text("not bak's")
    listed = run_cli("list").envelope["result"]
    assert "rsync-files-2030-01-01" not in [b["name"] for b in listed["backups"]]
    assert any(f["name"] == "rsync-files-2030-01-01" for f in listed["foreign"])


# --- item 9: no traceback from what a destination holds ------------------------------------------------------
EDITS = [b"not json {", b"[1, 2]", b'{"no_counts": 1}', b'{"row_counts": [1]}', b'{"row_counts": {"public.users": "x"}}',
         b'{"row_counts": {"public.users": -1}}', b'{"row_counts": {"public.users": true}}', b"\xff\xfe binary",
         b'{"row_counts": 5}', b"[" * 100_000 + b"]" * 100_000,
         json.dumps({"row_counts": {f"t{i}": i for i in range(50_000)}}).encode()]


def test_an_edited_meta_file_fails_the_drill_and_never_crashes_it(bak_home, pg, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PG_PASSWORD)
    lab_config(bak_home, pg, dests={"local": {"kind": "local", "path": str(bak_home / "local")}})
    created = run_cli("create")
    assert created.code == 0, created.envelope
    name = created.envelope["result"]["targets"][0]["name"]
    meta = bak_home / "local" / "postgresql" / "pg-app" / f"{name}.meta.json"
    for edit in EDITS:
        meta.write_bytes(edit)
        drill = run_cli("drill")
        assert_clean(drill, (1,))
        assert drill.envelope["errors"][0]["code"] == "drill_failed", drill.envelope["errors"]
        assert ".meta.json" in drill.envelope["errors"][0]["message"] or "row counts differ" in \
            drill.envelope["errors"][0]["message"], (edit[:40], drill.envelope["errors"])
        assert len(drill.stdout) < 30_000
    assert "bak_drill_" not in pg.psql("SELECT string_agg(datname, ',') FROM pg_database")


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(value=json_values | st.dictionaries(st.just("row_counts"), json_values, min_size=1), raw=st.binary(max_size=64))
def test_the_recorded_row_counts_parser_takes_any_input(value, raw):
    from bak.methods.pg_dump import recorded_row_counts

    for data in (json.dumps(value).encode(), raw):
        counts, problem = recorded_row_counts(data)
        assert (counts is None) != (problem is None)
        if counts is not None:
            assert all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in counts.items())


def test_a_report_over_a_remote_restic_destination_answers(bak_home, rest_server):
    from test_offsite import offsite

    data = lab(bak_home)
    data["destinations"]["offsite"] = offsite(bak_home, rest_server.repository("report/"))
    data["targets"][0]["destinations"].append("offsite")
    write_config(bak_home / "config.yaml", data)
    assert run_cli("destination", "init", "offsite").code == 0
    assert run_cli("create").code == 0
    result = run_cli("report", "--html", str(bak_home / "report.html"))
    assert_clean(result, (0,))
    assert "offsite" in [d["destination"] for d in result.envelope["result"]["destinations"]]
    assert (bak_home / "report.html").stat().st_size > 0


# --- item 13: verify refuses what restore would refuse ---------------------------------------------------------
def tarball(members: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize("member", ["../escape.txt", "./a/../../escape.txt", "/etc/evil", "a/../../../x"])
def test_a_volume_tarball_with_members_outside_fails_its_verify(bak_home, member):
    data = lab(bak_home)
    data["targets"].append({"name": "vol", "method": "docker_volume", "destinations": ["here"],
                            "docker_volume": {"container": "app", "volume": "data"}})
    write_config(bak_home / "config.yaml", data)
    folder = bak_home / "dest" / "docker-volumes" / "vol"
    folder.mkdir(parents=True)
    name = naming.docker_volume_name("app", "data", __import__("datetime").datetime(2026, 1, 1))
    content = tarball([("./", b""), ("./ok.txt", b"fine"), (member, b"outside")])
    (folder / name).write_bytes(content)
    (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(content).hexdigest()}  {name}\n")
    verified = run_cli("verify", "--target", "vol")
    assert_clean(verified, (1,))
    [row] = verified.envelope["result"]["checked"]
    assert not row["ok"] and "outside" in row["error"] and member in row["error"], row
