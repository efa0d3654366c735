"""The smaller findings of the second hostile review (issue 30, item 13): each said plainly, before anything
runs or connects, and a dry run that checks what it can."""

import subprocess
import time

import pytest
import yaml

from conftest import free_port, mount_tmpfs, run_cli, write_config
from test_hostile_input import assert_clean, lab
from test_pg import PASSWORD, lab_config, pg  # noqa: F401  (the module fixture: a database with tables)


def test_list_of_a_destination_that_does_not_exist_is_bad_input(bak_home):
    lab(bak_home)
    result = run_cli("list", "--destination", "nope")
    assert_clean(result, (2,))
    assert "no destination named 'nope'" in result.envelope["errors"][0]["message"]
    assert "here" in result.envelope["errors"][0]["hint"]
    assert run_cli("list", "--destination", "here").code == 0


def test_file_on_a_restore_of_a_database_is_refused_not_ignored(bak_home):
    data = lab(bak_home)
    data["targets"].append({"name": "db", "method": "pg_dump", "destinations": ["here"],
                            "pg_dump": {"database": "app", "port": free_port()}})
    write_config(bak_home / "config.yaml", data)
    result = run_cli("restore", "--target", "db", "--file", "public.users", "--dry-run")
    assert_clean(result, (2,))
    assert result.envelope["errors"][0]["where"] == "--file"


@pytest.mark.parametrize("fingerprint", ["garbage", "", "SHA256:short", "MD5:aa:bb", "SHA256:" + "x" * 42 + "!"])
def test_a_malformed_fingerprint_is_refused_before_connecting(bak_home, fingerprint, monkeypatch):
    import socket

    def no_connection(*args, **kwargs):
        raise AssertionError("bak connected before checking the fingerprint")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    write_config(bak_home / "config.yaml", {"version": 1, "hosts": {"box": {"address": "127.0.0.1", "port": 22}}})
    trusted = run_cli("ssh", "trust", "box", "--fingerprint", fingerprint)
    assert_clean(trusted, (2,))
    assert "is not an SSH key fingerprint" in trusted.envelope["errors"][0]["message"]
    booted = run_cli("bootstrap", "--from", "root@127.0.0.1:/srv/backups", "--fingerprint", fingerprint)
    assert_clean(booted, (2,))
    assert "is not an SSH key fingerprint" in booted.envelope["errors"][0]["message"]
    assert not (bak_home / "state" / "known_hosts").exists()


# --- create --dry-run checks what it can ------------------------------------------------------------------
def broken_configs(home, pg_port):
    """Seven configs whose create fails, each for one reason a dry run can see without writing."""
    (home / "src").mkdir(exist_ok=True)
    (home / "a-file").write_text("not a folder")
    known = home / "known_hosts"
    known.write_text("")
    dest = {"here": {"kind": "local", "path": str(home / "dest")}}
    files = {"name": "files", "method": "rsync", "destinations": ["here"], "rsync": {"source": str(home / "src")}}
    closed = free_port()
    return {
        "unreachable host": ({"hosts": {"box": {"address": "127.0.0.1", "port": closed, "known_hosts": str(known)}},
                              "targets": [{**files, "host": "box"}]}, "transport"),
        "missing key": ({"hosts": {"box": {"address": "127.0.0.1", "port": closed, "key_file": str(home / "no-key")}},
                         "targets": [{**files, "host": "box"}]}, "bad_input"),
        "unset secret": ({"targets": [{"name": "db", "method": "pg_dump", "destinations": ["here"],
                                       "pg_dump": {"database": "app", "port": pg_port,
                                                   "password": {"env": "BAK_TEST_UNSET_SECRET"}}}]}, "bad_input"),
        "missing source": ({"targets": [{**files, "rsync": {"source": str(home / "gone")}}]}, "source_missing"),
        "destination is a file": ({"destinations": {"here": {"kind": "local", "path": str(home / "a-file")}},
                                   "targets": [files]}, "destination_not_a_folder"),
        "destination below a file": ({"destinations": {"here": {"kind": "local", "path": str(home / "a-file" / "x")}},
                                      "targets": [files]}, "destination_not_a_folder"),
        "database down": ({"targets": [{"name": "db", "method": "pg_dump", "destinations": ["here"],
                                        "pg_dump": {"database": "app", "port": closed}}]}, "pg_not_ready"),
    }, dest


def test_a_dry_run_says_why_each_broken_config_would_fail_and_writes_nothing(bak_home, pg, monkeypatch):  # noqa: F811
    monkeypatch.delenv("BAK_TEST_UNSET_SECRET", raising=False)
    configs, dest = broken_configs(bak_home, pg.port)
    for why, (parts, code) in configs.items():
        data = {"version": 1, "destinations": dest, **parts}
        for target in data["targets"]:
            if target["method"] == "pg_dump":
                target["pg_dump"]["bin_dir"] = str(pg.bindir)
        write_config(bak_home / "config.yaml", data)
        result = run_cli("create", "--dry-run")
        assert_clean(result, (1, 2, 3))
        assert result.code != 0, (why, result.envelope)
        entry = result.envelope["result"]["targets"][0]
        assert entry["status"] == "would_fail" and entry["error"], (why, entry)
        assert code in [e["code"] for e in result.envelope["errors"]], (why, result.envelope["errors"])
        assert not (bak_home / "dest").exists(), why
    # and a config that works is planned
    write_config(bak_home / "config.yaml", {"version": 1, "destinations": dest, "targets": [
        {"name": "files", "method": "rsync", "destinations": ["here"], "rsync": {"source": str(bak_home / "src")}}]})
    planned = run_cli("create", "--dry-run")
    assert planned.code == 0 and planned.envelope["result"]["targets"][0]["status"] == "planned"
    assert not (bak_home / "dest").exists()


# --- no_space: the space a dump needs ------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    point = mount_tmpfs(tmp_path / "small", "2m")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_small_dump_fits_a_small_disk_its_database_size_does_not(bak_home, pg, small_disk, monkeypatch):  # noqa: F811
    pg.psql("DROP DATABASE IF EXISTS spacey")
    pg.psql("CREATE DATABASE spacey")
    pg.psql("CREATE TABLE notes AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS body "
            "FROM generate_series(1, 12000) g; GRANT SELECT ON notes TO backup", db="spacey")
    database_size = int(pg.psql("SELECT pg_database_size('spacey')"))
    assert database_size * 1.2 > 2 << 20  # what the old precheck asked for: more than the whole disk
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    lab_config(bak_home, pg, dests={"small": {"kind": "local", "path": str(small_disk / "backups")}})
    data = yaml.safe_load((bak_home / "config.yaml").read_text())
    data["targets"][0]["pg_dump"].update(database="spacey", sanity_queries=[])
    write_config(bak_home / "config.yaml", data)
    first = run_cli("create")
    assert first.code == 0, first.envelope["errors"]
    entry = first.envelope["result"]["targets"][0]
    assert entry["size"] < entry["space_needed"] < 2 << 20
    time.sleep(1.1)  # a dump's name has its second: the next one is a new name
    second = run_cli("create")  # now sized by the last dump
    assert second.code == 0, second.envelope["errors"]
    assert second.envelope["result"]["targets"][0]["space_needed"] == int(1.2 * entry["size"])


def test_a_name_that_is_not_utf8_on_the_command_line_is_bad_input(bak_home):
    """Real argv bytes (not Python strings): \\x80 reaches bak as a lone surrogate, which SQLite and JSON cannot take."""
    import json
    import os
    import sys

    from conftest import REPO

    lab(bak_home)
    for args in ([b"log", b"--target", b"\x80"], [b"list", b"--destination", b"caf\xe9"], [b"status", b"--bogus\xff"]):
        out = subprocess.run([sys.executable.encode(), b"-m", b"bak", *args, b"--json"], capture_output=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(REPO / "lib")})
        assert out.returncode == 2 and b"Traceback" not in out.stderr, (args, out.stdout, out.stderr)
        assert json.loads(out.stdout)["errors"][0]["code"] == "bad_input"
