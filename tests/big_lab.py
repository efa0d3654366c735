"""A lab of 1,000 backups over 30 targets, for what the agent reads of each command on a homelab that has run a while.

15 PostgreSQL targets (a database each in the session's real cluster) and 15 config-folder targets, each on two
folder destinations; 10 of them also name a restic repository (`offsite`) that holds nothing yet, so `sync`
has hundreds of copies to plan. One real `bak create` makes a real backup of each target on each destination;
the older ones are those bytes under older names (a dump with its sidecars, a snapshot folder with its
manifest), so verify, restore and drill read real, intact backups of every age.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from bak import naming
from conftest import run_cli, write_config

PASSWORD = "big-Lab-pass"
PG_TARGETS, FOLDER_TARGETS = 15, 15
DESTINATIONS = ("disk", "nas")
TOTAL = 1000  # backups, counting each destination's copy


def _per_target_counts() -> list[int]:
    """Uneven, as in life: 6-hourly dumps pile up, config folders less so; the sum over both destinations is TOTAL."""
    weights = [6 if i < PG_TARGETS else 2 for i in range(PG_TARGETS + FOLDER_TARGETS)]
    per_copy = TOTAL // len(DESTINATIONS)
    counts = [max(1, per_copy * w // sum(weights)) for w in weights]
    counts[0] += per_copy - sum(counts)
    return counts


def config_data(home: Path, server, offsite: bool) -> dict:
    targets = []
    for i in range(PG_TARGETS):
        dests = [*DESTINATIONS, *(["offsite"] if offsite and i < 5 else [])]
        targets.append({"name": f"db-{i:02d}", "method": "pg_dump", "destinations": dests, "policy": "gfs",
                        "interval": "6h",
                        "pg_dump": {"database": f"big{i:02d}", "address": "127.0.0.1", "port": server.port,
                                    "user": "backup", "password": {"file": str(home / "pg.pass")},
                                    "bin_dir": str(server.bindir)}})
    for i in range(FOLDER_TARGETS):
        dests = [*DESTINATIONS, *(["offsite"] if offsite and i < 5 else [])]
        targets.append({"name": f"conf-{i:02d}", "method": "config", "destinations": dests, "policy": "gfs",
                        "interval": "1d", "config": {"source": str(home / "sources" / f"conf-{i:02d}")}})
    return {"version": 1,
            "destinations": {"disk": {"kind": "local", "path": str(home / "disk"), "medium": "ssd"},
                             "nas": {"kind": "local", "path": str(home / "nas"), "medium": "nfs", "offsite": True},
                             "offsite": {"kind": "restic", "repository": str(home / "restic"),
                                         "password": {"file": str(home / "restic.pass")}, "offsite": True}},
            "policies": {"gfs": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}},
            "targets": targets}


def build(home: Path, server) -> dict:
    """The lab under `home` (with BAK_CONFIG and BAK_STATE_DIR already pointing there); returns its facts."""
    server.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='backup') THEN "
                f"CREATE ROLE backup LOGIN PASSWORD '{PASSWORD}' CREATEDB; END IF; END$$")
    server.psql(f"ALTER ROLE backup PASSWORD '{PASSWORD}'")
    for i in range(PG_TARGETS):
        server.psql(f"DROP DATABASE IF EXISTS big{i:02d}")
        server.psql(f"CREATE DATABASE big{i:02d} OWNER backup")
        server.psql(f"CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) "
                    f"FROM generate_series(1, {100 + i}) g; ALTER TABLE t OWNER TO backup", db=f"big{i:02d}")
    (home / "pg.pass").write_text(PASSWORD + "\n")
    (home / "restic.pass").write_text("restic lab password\n")
    for path in (home / "pg.pass", home / "restic.pass"):
        path.chmod(0o600)
    for i in range(FOLDER_TARGETS):
        source = home / "sources" / f"conf-{i:02d}"
        (source / "sub").mkdir(parents=True)
        (source / "settings.json").write_text(json.dumps({"target": i}) + "\n")
        (source / "sub" / "notes.md").write_text(f"# notes {i}\n" * (i + 1))
    write_config(home / "config.yaml", config_data(home, server, offsite=False))
    made = run_cli("create")
    assert made.code == 0, made.envelope["errors"]
    now = datetime.now().replace(microsecond=0)
    counts = _per_target_counts()
    for index, entry in enumerate(made.envelope["result"]["targets"]):
        for dest in DESTINATIONS:
            folder = home / dest / ("postgresql" if entry["method"] == "pg_dump" else "config") / entry["target"]
            for age in range(1, counts[index]):
                if entry["method"] == "pg_dump":
                    _copy_dump(folder, entry["name"], naming.pg_dump_name("big" + entry["target"][-2:], now - timedelta(hours=6 * age)))
                else:
                    _copy_snapshot(folder, entry["name"], naming.rsync_name(entry["target"], now - timedelta(days=age)))
    write_config(home / "config.yaml", config_data(home, server, offsite=True))
    assert run_cli("destination", "init", "offsite").code == 0
    return {"targets": PG_TARGETS + FOLDER_TARGETS, "backups": sum(counts) * len(DESTINATIONS)}


def _copy_dump(folder: Path, name: str, new: str) -> None:
    data = (folder / name).read_bytes()
    (folder / new).write_bytes(data)
    (folder / f"{new}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {new}\n")
    meta = json.loads((folder / f"{name}.meta.json").read_text())
    (folder / f"{new}.meta.json").write_text(json.dumps({**meta, "name": new}, indent=1))


def _copy_snapshot(folder: Path, name: str, new: str) -> None:
    shutil.copytree(folder / name, folder / new, symlinks=True)
    shutil.copy2(folder / f"{name}.manifest", folder / f"{new}.manifest")
