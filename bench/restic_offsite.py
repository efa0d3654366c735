"""Issue 18: off-site copies on restic vs bare restic, same run, against a REST server on loopback
(`rclone serve restic`). Each run writes into a repository of its own, created beforehand (untimed),
so deduplication against an earlier run never flatters either side.

1. A ~1 GiB dump: `bak create` of a PostgreSQL target whose destination is the repository, vs
   `pg_dump -Fc | restic backup --stdin` of the same database (target <= 1.05x).
2. `bak sync` of N existing artifacts (on a local destination) into the repository, vs bare restic
   making the same N snapshots, one `restic backup FILE` each: bak keeps one snapshot per artifact,
   so it can forget one. One `restic backup` of all N files in a single snapshot is shown too
   (target <= 1.1x against the per-file snapshots).

BENCH_PG_MIB (default 1024) sizes the random data in the database; BENCH_SYNC_FILES / BENCH_SYNC_MIB the
artifacts (default 8 of 64 MiB).
"""

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import bak_env, compare, ratio, wall
from bak.demo import DemoCluster, free_port, pg_bindir

PG_MIB = int(os.environ.get("BENCH_PG_MIB", "1024"))
SYNC_FILES = int(os.environ.get("BENCH_SYNC_FILES", "8"))
SYNC_MIB = int(os.environ.get("BENCH_SYNC_MIB", "64"))
PASSWORD = "bench restic password"


def main() -> int:
    bindir = pg_bindir()
    if bindir is None or not shutil.which("rclone") or not shutil.which("restic"):
        print("needs PostgreSQL binaries, rclone and restic")
        return 1
    root = Path(tempfile.mkdtemp(prefix="bak-bench-restic-"))
    os.chmod(root, 0o711)
    port = free_port()
    server = subprocess.Popen(["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}", str(root / "rest")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = DemoCluster(root / "pg", bindir)
    numbers = itertools.count()
    secret = root / "restic.pass"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    env = bak_env(BAK_STATE_DIR=str(root / "state"), RESTIC_CACHE_DIR=str(root / "cache"),
                  RESTIC_PASSWORD_FILE=str(secret), PGPASSWORD="bench-pass")
    current = {}

    def fresh_repository():
        """A new, empty repository for the next run (its creation is not timed)."""
        current["url"] = f"rest:http://127.0.0.1:{port}/run-{next(numbers)}/"
        subprocess.run(["restic", "init", "-q"], env={**env, "RESTIC_REPOSITORY": current["url"]}, check=True,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(root / "state", ignore_errors=True)

    def bak(config_name, *args):
        def run():
            config = yaml.safe_load((root / config_name).read_text())
            config["destinations"]["offsite"]["repository"] = current["url"]
            (root / config_name).write_text(yaml.safe_dump(config))
            return wall([sys.executable, "-m", "bak", *args, "--config", str(root / config_name), "--json"], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return run

    def restic(*args, **kwargs):
        return lambda: wall(["restic", *args], env={**env, "RESTIC_REPOSITORY": current["url"]},
                            stdout=subprocess.DEVNULL, **kwargs)

    try:
        time.sleep(1)
        ok = True
        # -- 1. a dump of about a GiB --------------------------------------------------------------
        cluster.start()
        cluster.sql("CREATE DATABASE bench; CREATE ROLE backup LOGIN PASSWORD 'bench-pass' SUPERUSER;")
        cluster.sql("CREATE EXTENSION pgcrypto;", "bench")
        cluster.sql(f"CREATE TABLE blobs AS SELECT g AS id, gen_random_bytes(1024) AS b "
                    f"FROM generate_series(1, {PG_MIB * 1024}) g;", "bench")
        options = {"database": "bench", "address": "127.0.0.1", "port": cluster.port, "user": "backup",
                   "password": {"file": str(secret.with_name("pg.pass"))}, "bin_dir": str(bindir), "globals": False}
        secret.with_name("pg.pass").write_text("bench-pass\n")
        secret.with_name("pg.pass").chmod(0o600)
        offsite = {"kind": "restic", "repository": "rest:http://127.0.0.1/", "password": {"file": str(secret)}}
        (root / "create.yaml").write_text(yaml.safe_dump({"version": 1, "destinations": {"offsite": offsite},
            "targets": [{"name": "pg-bench", "method": "pg_dump", "destinations": ["offsite"], "pg_dump": options}]}))
        dump = [str(bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "backup", "-d", "bench", "-w", "-Fc"]

        def bare_dump():
            return wall(["sh", "-c", '"$@" | restic backup -q --stdin --stdin-filename bench.dump', "sh", *dump],
                        env={**env, "RESTIC_REPOSITORY": current["url"]}, stdout=subprocess.DEVNULL)

        size = int(subprocess.run(["sh", "-c", '"$@" | wc -c', "sh", *dump], env=env, capture_output=True,
                                  text=True, check=True).stdout)
        medians = compare(f"a {size / (1 << 30):.2f} GiB dump into a REST repository", {
            "pg_dump -Fc | restic backup --stdin": bare_dump,
            "bak create": bak("create.yaml", "create"),
        }, setup=fresh_repository, rounds=3)
        ok &= ratio("bak create / bare", medians["bak create"], medians["pg_dump -Fc | restic backup --stdin"], 1.05)
        cluster.stop()

        # -- 2. sync of N existing artifacts ------------------------------------------------------
        folder = root / "nfs" / "postgresql" / "pg-bench"
        folder.mkdir(parents=True)
        files = []
        for index in range(SYNC_FILES):
            name = f"pg-bench-2026-11-{10 + index:02d}_120000.dump"
            data = os.urandom(SYNC_MIB << 20)
            (folder / name).write_bytes(data)
            (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
            (folder / f"{name}.meta.json").write_text('{"row_counts": {}}')
            files.append(str(folder / name))
        (root / "sync.yaml").write_text(yaml.safe_dump({"version": 1, "destinations": {
            "nfs": {"kind": "local", "path": str(root / "nfs")}, "offsite": offsite},
            "targets": [{"name": "pg-bench", "method": "pg_dump", "destinations": ["nfs", "offsite"], "interval": "1w",
                         "pg_dump": {"database": "bench"}}]}))

        def per_file():
            return sum(restic("backup", "-q", path)() for path in files)

        medians = compare(f"{SYNC_FILES} artifacts of {SYNC_MIB} MiB into a REST repository", {
            "restic backup FILE (one snapshot each)": per_file,
            "restic backup FILE... (one snapshot)": restic("backup", "-q", *files),
            "bak sync": bak("sync.yaml", "sync", "--to", "offsite"),
        }, setup=fresh_repository, rounds=3)
        ok &= ratio("bak sync / one snapshot each", medians["bak sync"], medians["restic backup FILE (one snapshot each)"], 1.1)
        ratio("bak sync / one snapshot of all", medians["bak sync"], medians["restic backup FILE... (one snapshot)"])
        return 0 if ok else 1
    finally:
        cluster.stop()
        server.kill()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
