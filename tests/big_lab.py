"""A lab of 1,000 backups over 30 targets, for what the agent reads of each command on a homelab that has run a while.

10 PostgreSQL targets (a database each in the session's real cluster) and 20 config-folder targets, each on two
folder destinations; 4 of them also name a restic repository (`offsite`) that holds nothing yet, so `sync`
has a hundred copies to plan. One real `bak create` (the /bak-create script) makes a real backup of each
target on each destination; the older ones are those bytes under older names (a dump with its sidecars, a
snapshot folder with its manifest), so verify, restore and drill read real, intact backups of every age.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import os
import subprocess
import sys

from bak import naming
from conftest import REPO, write_config

ROLE, PASSWORD = "big_lab", "big-Lab-pass"
PG_TARGETS, FOLDER_TARGETS = 10, 20
WITH_OFFSITE = 2  # of each kind
DESTINATIONS = ("disk", "nas")
TOTAL = 1000  # backups, counting each destination's copy


def _per_target_counts() -> list[int]:
    """Uneven, as in life: 6-hourly dumps pile up, config folders less so; the sum over both destinations is TOTAL."""
    weights = [4 if i < PG_TARGETS else 3 for i in range(PG_TARGETS + FOLDER_TARGETS)]
    per_copy = TOTAL // len(DESTINATIONS)
    counts = [max(1, per_copy * w // sum(weights)) for w in weights]
    counts[0] += per_copy - sum(counts)
    return counts


def config_data(home: Path, server, offsite: bool) -> dict:
    targets = []
    for i in range(PG_TARGETS):
        dests = [*DESTINATIONS, *(["offsite"] if offsite and i < WITH_OFFSITE else [])]
        targets.append({"name": f"db-{i:02d}", "method": "pg_dump", "destinations": dests, "policy": "gfs",
                        "interval": "6h",
                        "pg_dump": {"database": f"big{i:02d}", "address": "127.0.0.1", "port": server.port,
                                    "user": ROLE, "password": {"file": str(home / "pg.pass")},
                                    "bin_dir": str(server.bindir)}})
    for i in range(FOLDER_TARGETS):
        dests = [*DESTINATIONS, *(["offsite"] if offsite and i < WITH_OFFSITE else [])]
        targets.append({"name": f"conf-{i:02d}", "method": "config", "destinations": dests, "policy": "gfs",
                        "interval": "1d", "config": {"source": str(home / "sources" / f"conf-{i:02d}")}})
    return {"version": 1,
            "destinations": {"disk": {"kind": "local", "path": str(home / "disk"), "medium": "ssd"},
                             "nas": {"kind": "local", "path": str(home / "nas"), "medium": "nfs", "offsite": True},
                             "offsite": {"kind": "restic", "repository": str(home / "restic"),
                                         "password": {"file": str(home / "restic.pass")}, "offsite": True},
                             "spare": {"kind": "restic", "repository": str(home / "spare"),  # for destination init
                                       "password": {"file": str(home / "restic.pass")}}},
            "policies": {"gfs": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}},
            "targets": targets}


def script(home: Path, name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A /bak-* script as the plugin runs it, on this lab (its envelope on stdout)."""
    lab_env = {**os.environ, "BAK_CONFIG": str(home / "config.yaml"), "BAK_STATE_DIR": str(home / "state"), **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"bak_{name}.py"), *args], env=lab_env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def build(home: Path, server) -> dict:
    """The lab under `home`; returns its facts, and the output of the /bak-create that made it."""
    # A role of its own: the session's cluster is shared, and other tests set `backup`'s password.
    server.psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='{ROLE}') THEN "
                f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}' CREATEDB; END IF; END$$")
    for i in range(PG_TARGETS):
        server.psql(f"DROP DATABASE IF EXISTS big{i:02d}")
        server.psql(f"CREATE DATABASE big{i:02d} OWNER {ROLE}")
        server.psql(f"CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) "
                    f"FROM generate_series(1, {100 + i}) g; ALTER TABLE t OWNER TO {ROLE}", db=f"big{i:02d}")
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
    made = script(home, "create")
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    now = datetime.now().replace(microsecond=0)
    counts = _per_target_counts()
    for index, target in enumerate(config_data(home, server, offsite=False)["targets"]):
        for dest in DESTINATIONS:
            if target["method"] == "pg_dump":
                folder = home / dest / "postgresql" / target["name"]
                (name,) = [p.name for p in folder.glob("*.dump")]
                for age in range(1, counts[index]):
                    _copy_dump(folder, name, naming.pg_dump_name(target["pg_dump"]["database"],
                                                                  now - timedelta(hours=6 * age)))
            else:
                folder = home / dest / "config" / target["name"]
                (name,) = [p.name for p in folder.iterdir() if p.is_dir()]
                for age in range(1, counts[index]):
                    _copy_snapshot(folder, name, naming.rsync_name(target["name"], now - timedelta(days=age)))
    write_config(home / "config.yaml", config_data(home, server, offsite=True))
    init = script(home, "destination", "init", "offsite")
    assert init.returncode == 0, init.stdout
    return {"targets": PG_TARGETS + FOLDER_TARGETS, "backups": sum(counts) * len(DESTINATIONS), "create": made}


def drop(server) -> None:
    for i in range(PG_TARGETS):
        server.psql(f"DROP DATABASE IF EXISTS big{i:02d} WITH (FORCE)")
    server.psql(f"DROP ROLE IF EXISTS {ROLE}")


def _copy_dump(folder: Path, name: str, new: str) -> None:
    data = (folder / name).read_bytes()
    (folder / new).write_bytes(data)
    (folder / f"{new}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {new}\n")
    meta = json.loads((folder / f"{name}.meta.json").read_text())
    (folder / f"{new}.meta.json").write_text(json.dumps({**meta, "name": new}, indent=1))


def _copy_snapshot(folder: Path, name: str, new: str) -> None:
    shutil.copytree(folder / name, folder / new, symlinks=True)
    shutil.copy2(folder / f"{name}.manifest", folder / f"{new}.manifest")
