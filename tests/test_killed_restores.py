"""Restores, drills and prunes killed with SIGKILL leave nothing nobody lists or cleans (issue 30, item 10): a
restore builds under a temp name and renames at the end, what a killed one left is journaled, `bak list` shows
it and the next restore or drill of the target removes it; a prune renames a backup out of the way before it
deletes it."""

import signal
import tempfile
import time
from pathlib import Path

import yaml

from conftest import bak_subprocess, run_cli, write_config
from test_docker import app, engine, fill_big  # noqa: F401  (fixtures: a real podman engine and a volume)
from test_docker import lab as docker_lab
from test_hostile_input import lab
from test_pg import PASSWORD, lab_config, pg  # noqa: F401  (the module fixture: a database with tables)


def kill_when(proc, ready, what: str, timeout: float = 60) -> None:
    """SIGKILL bak as soon as `ready()` holds (polled every few ms), as the OOM killer or a power cut would."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"bak ended (exit {proc.returncode}) before {what}: {proc.communicate()}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def leftovers(kind: str | None = None) -> list[dict]:
    listed = run_cli("list").envelope["result"]["restore_leftovers"]
    return [row for row in listed if kind is None or row["kind"] == kind]


def big_tree(source: Path, megabytes: int = 384) -> None:
    """Sparse here, written whole by rsync's restore (it does not keep holes unless asked): a window to kill it in."""
    for name in ("one.bin", "two.bin"):
        with open(source / name, "wb") as handle:
            handle.truncate((megabytes // 2) << 20)


def test_a_killed_folder_restore_leaves_no_half_folder_under_its_name(bak_home):
    lab(bak_home)
    big_tree(bak_home / "src")
    assert run_cli("create").code == 0
    into = bak_home / "restored"
    stage = Path(f"{into}.bak-restoring")
    proc = bak_subprocess("restore", "--target", "files", "--into", str(into), "--json")
    kill_when(proc, lambda: stage.exists() or into.exists(), "the restore started writing")
    assert not into.exists(), "a killed restore left a half folder under the final name"
    assert stage.exists()
    assert [r["where"] for r in leftovers("restore")] == [f"path:{stage}"]
    again = run_cli("restore", "--target", "files", "--into", str(into))
    assert again.code == 0, again.envelope
    assert any(w.startswith(f"removed path:{stage}") for w in again.envelope["warnings"]), again.envelope["warnings"]
    assert not stage.exists() and sorted(p.name for p in into.iterdir()) == ["a.txt", "one.bin", "two.bin"]
    assert leftovers() == []


def test_a_killed_drill_leaves_no_scratch_folder(bak_home):
    lab(bak_home)
    big_tree(bak_home / "src")
    assert run_cli("create").code == 0
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("bak-drill.*"))
    proc = bak_subprocess("drill", "--json")
    kill_when(proc, lambda: set(temp.glob("bak-drill.*")) - before, "the drill made its scratch folder")
    [scratch] = set(temp.glob("bak-drill.*")) - before
    assert [r["where"] for r in leftovers("drill")] == [f"path:{scratch}"]
    again = run_cli("drill")
    assert again.code == 0, again.envelope
    assert not scratch.exists() and set(temp.glob("bak-drill.*")) == before
    assert leftovers() == []


def test_a_killed_prune_leaves_no_half_snapshot_listed_as_a_backup(bak_home):
    data = lab(bak_home)
    for number in range(3000):
        (bak_home / "src" / f"f{number:05}.txt").write_text(str(number))
    data["policies"]["p"] = {"keep_last": 1}
    write_config(bak_home / "config.yaml", data)
    assert run_cli("create").code == 0
    time.sleep(1.05)
    assert run_cli("create").code == 0
    folder = bak_home / "dest" / "rsync" / "files"
    old = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    count = sum(1 for _ in old.iterdir())
    proc = bak_subprocess("prune", "--json")
    kill_when(proc, lambda: not old.exists() or sum(1 for _ in old.iterdir()) < count, "the prune started deleting")
    listed = run_cli("list").envelope["result"]
    assert old.name not in [b["name"] for b in listed["backups"]], "half a snapshot was listed as a backup"
    assert any(p["name"] == old.name + ".partial" for p in listed["partials"]), listed["partials"]
    assert run_cli("verify", "--all-backups").code == 0
    time.sleep(1.05)
    assert run_cli("create").code == 0  # the next create clears what an interrupted run left
    assert not list(folder.glob("*.partial")) and not (folder / old.name).exists()


def bulky(pg, monkeypatch, home) -> None:  # noqa: F811
    pg.psql("DROP DATABASE IF EXISTS bulky")
    pg.psql("CREATE DATABASE bulky OWNER backup")
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1500000) g; ALTER TABLE t OWNER TO backup",
            db="bulky")
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    lab_config(home, pg, dests={"local": {"kind": "local", "path": str(home / "local")}})
    data = yaml.safe_load((home / "config.yaml").read_text())
    data["targets"][0]["pg_dump"].update(database="bulky", sanity_queries=[])
    write_config(home / "config.yaml", data)
    assert run_cli("create").code == 0


def databases(pg) -> set[str]:
    return set(filter(None, pg.psql("SELECT datname FROM pg_database").split()))


def test_a_killed_database_restore_or_drill_leaves_no_database_behind(bak_home, pg, monkeypatch):  # noqa: F811
    bulky(pg, monkeypatch, bak_home)
    before = databases(pg)
    proc = bak_subprocess("restore", "--target", "pg-app", "--into", "bulky_back", "--no-owner", "--json")
    kill_when(proc, lambda: databases(pg) - before, "the restore created its database")
    made = databases(pg) - before
    assert "bulky_back" not in made and all(name.startswith("bak_incoming_") for name in made), made
    assert [r["where"] for r in leftovers("restore")] == [f"database:{name}" for name in made]
    again = run_cli("restore", "--target", "pg-app", "--into", "bulky_back", "--no-owner")
    assert again.code == 0, again.envelope
    assert databases(pg) - before == {"bulky_back"} and leftovers() == []

    before = databases(pg)
    proc = bak_subprocess("drill", "--json")
    kill_when(proc, lambda: databases(pg) - before, "the drill created its database")
    assert leftovers("drill")
    assert run_cli("drill").code == 0
    assert databases(pg) == before and leftovers() == []
    pg.psql("DROP DATABASE bulky_back")


def test_a_killed_volume_restore_leaves_no_half_volume(engine, app, bak_home):  # noqa: F811
    docker_lab(bak_home, app, "podman")
    fill_big(app.path, 96)
    assert run_cli("create").code == 0
    before = set(engine.volumes())
    proc = bak_subprocess("restore", "--target", "db", "--into", "half-restored", "--json", env=engine.env)
    kill_when(proc, lambda: "half-restored" in engine.volumes(), "the restore created its volume")
    assert [r["where"] for r in leftovers("restore")] == ["volume:half-restored"]
    again = run_cli("restore", "--target", "db", "--into", "half-restored")
    assert again.code == 0, again.envelope
    assert any("removed volume:half-restored" in w for w in again.envelope["warnings"])
    assert leftovers() == []
    engine.podman("volume", "rm", "half-restored")
    assert set(engine.volumes()) == before
