"""Issue 4: `bak create` of a PostgreSQL database of a few hundred MB vs the bare tools, same run.

Targets: faster than `pg_dump -Fc -f x && sha256sum x`; <= 1.05x bare `pg_dump -Fc -f x`;
a second destination costs no second dump.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from _common import bak_env, compare, ratio, wall
from bak.demo import DemoCluster, pg_bindir

ROWS = int(os.environ.get("BENCH_PG_ROWS", "2500000"))


def main() -> int:
    bindir = pg_bindir()
    if bindir is None:
        print("PostgreSQL binaries not found")
        return 1
    root = Path(tempfile.mkdtemp(prefix="bak-bench-pg-"))
    os.chmod(root, 0o711)
    cluster = DemoCluster(root / "pg", bindir)
    try:
        cluster.start()
        cluster.sql("CREATE DATABASE bench; CREATE ROLE backup LOGIN PASSWORD 'bench-pass' SUPERUSER;")
        cluster.sql(f"CREATE TABLE events AS SELECT g AS id, now() - g * interval '1 second' AS at, "
                    f"md5(g::text) AS k, repeat(md5((g % 1000)::text), 2) AS payload FROM generate_series(1, {ROWS}) g; "
                    "CREATE INDEX ON events (at); ANALYZE;", "bench")
        size = subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "backup", "-d", "bench",
                               "-XAtc", "SELECT pg_size_pretty(pg_database_size('bench'))"],
                              env={**os.environ, "PGPASSWORD": "bench-pass"}, capture_output=True, text=True).stdout.strip()
        secret = root / "pass"
        secret.write_text("bench-pass\n")
        secret.chmod(0o600)
        options = {"database": "bench", "address": "127.0.0.1", "port": cluster.port, "user": "backup",
                   "password": {"file": str(secret)}, "bin_dir": str(bindir)}

        def config(name, dests):
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump({"version": 1,
                "destinations": {d: {"kind": "local", "path": str(root / d)} for d in dests},
                "targets": [{"name": "pg-bench", "method": "pg_dump", "destinations": dests, "pg_dump": options}]}))
            return path

        one, two = config("one", ["d1"]), config("two", ["d1", "d2"])
        env = bak_env(BAK_STATE_DIR=str(root / "state"), PGPASSWORD="bench-pass")
        dump = [str(bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "backup", "-d", "bench", "-w", "-Fc"]

        def clean():
            for name in ("d1", "d2", "bare.dump"):
                shutil.rmtree(root / name, ignore_errors=True) if (root / name).is_dir() else (root / name).unlink(missing_ok=True)
            subprocess.run(["sync"])

        def bak(config_path):
            return lambda: wall([sys.executable, "-m", "bak", "create", "--config", str(config_path), "--json"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        medians = compare(f"dump a {size} database", {
            "pg_dump -Fc -f x": lambda: wall([*dump, "-f", str(root / "bare.dump")], env=env),
            "pg_dump -Fc -f x && sha256sum x": lambda: wall([*dump, "-f", str(root / "bare.dump")], env=env)
                                                        + wall(["sha256sum", str(root / "bare.dump")], stdout=subprocess.DEVNULL),
            "bak create (1 destination)": bak(one),
            "bak create (2 destinations)": bak(two),
        }, setup=clean, rounds=3)
        ok = ratio("bak / pg_dump", medians["bak create (1 destination)"], medians["pg_dump -Fc -f x"], 1.05)
        ok &= ratio("bak / (pg_dump && sha256sum)", medians["bak create (1 destination)"],
                    medians["pg_dump -Fc -f x && sha256sum x"], 1.0)
        ratio("bak 2 destinations / 1 destination", medians["bak create (2 destinations)"], medians["bak create (1 destination)"])
        return 0 if ok else 1
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
