"""Issue 7: verify's checksum vs sha256sum (>= 3.5x), two files on 2 cores vs sequential (>= 1.8x),
and `bak status` over a catalogue of 50,000 backups (< 1 s)."""

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from _common import bak_env, compare, wall
from bak import naming
from bak.catalog import Backup
from bak.stores.base import Entry
from bak.stores.local import LocalStore
from bak.verify import check_file

SIZE_MIB = int(os.environ.get("BENCH_VERIFY_MIB", "1024"))


def make_file(folder: Path, name: str) -> Backup:
    digest = hashlib.sha256()
    with open(folder / name, "wb") as handle:
        for _ in range(SIZE_MIB):
            block = os.urandom(1 << 20)
            digest.update(block)
            handle.write(block)
    (folder / f"{name}.sha256").write_text(f"{digest.hexdigest()}  {name}\n")
    return Backup("t", "s", "f", name, datetime.now(), Entry(name, SIZE_MIB << 20, 0.0, False), [f"{name}.sha256"])


def verify_bench(tmp: Path) -> bool:
    folder = tmp / "f"
    folder.mkdir()
    store = LocalStore("s", str(tmp))
    first = make_file(folder, "pg-a-2026-11-30_000000.dump")
    second = make_file(folder, "pg-b-2026-11-30_000000.dump")

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    medians = compare(f"checksum {SIZE_MIB} MiB (page cache warm)", {
        "sha256sum": lambda: wall(["sha256sum", str(folder / first.name)], stdout=subprocess.DEVNULL),
        "bak verify (hashlib/OpenSSL)": lambda: timed(lambda: check_file(store, first)),
        "bak verify, 2 files one after the other": lambda: timed(lambda: [check_file(store, b) for b in (first, second)]),
        "bak verify, 2 files in parallel": lambda: timed(
            lambda: list(ThreadPoolExecutor(2).map(lambda b: check_file(store, b), (first, second)))),
    }, rounds=3)
    speedup = medians["sha256sum"] / medians["bak verify (hashlib/OpenSSL)"]
    parallel = medians["bak verify, 2 files one after the other"] / medians["bak verify, 2 files in parallel"]
    print(f"  speed-up over sha256sum: {speedup:.2f}x (target >= 3.5x) {'OK' if speedup >= 3.5 else 'UNDER'}")
    print(f"  2 files in parallel vs one after the other: {parallel:.2f}x (target >= 1.8x) {'OK' if parallel >= 1.8 else 'UNDER'}")
    return speedup >= 3.5 and parallel >= 1.8


def status_bench(tmp: Path) -> bool:
    targets, per_target = 50, 1000
    dest = tmp / "catalogue"
    folder = dest / "postgresql"
    folder.mkdir(parents=True)
    start = datetime.now().replace(microsecond=0)
    for t in range(targets):
        for i in range(per_target):
            name = naming.pg_dump_name(f"db{t}", start - timedelta(hours=6 * i))
            (folder / name).touch()
            (folder / f"{name}.sha256").touch()
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({"version": 1, "destinations": {"d": {"kind": "local", "path": str(dest)}},
                                      "targets": [{"name": f"db{t}", "method": "pg_dump", "destinations": ["d"],
                                                   "pg_dump": {"database": f"db{t}"}} for t in range(targets)]}))
    env = bak_env(BAK_STATE_DIR=str(tmp / "state"))
    medians = compare(f"bak status over {targets * per_target} backups ({targets} targets, one folder)", {
        "bak status --json (whole process)": lambda: wall([sys.executable, "-m", "bak", "status", "--config", str(config),
                                                           "--json"], ok_codes=(0, 1), env=env,
                                                          stdout=subprocess.DEVNULL),
    }, rounds=3)
    value = medians["bak status --json (whole process)"]
    print(f"  under 1 s: {'OK' if value < 1 else 'NO'}")
    return value < 1


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bak-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        ok = verify_bench(Path(tmp))
        ok = status_bench(Path(tmp)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
