"""File snapshots against the bare tools, in the same run (issue 17).

For each size (BENCH_RSYNC_SIZES, default 50000; 500000 for the full run):
- 2nd snapshot of an unchanged tree: `bak create` vs bare `rsync -a --link-dest` vs restic's 2nd backup, and vs
  bak's own split (one rsync per core over the top-level names) done by bare rsyncs, for what bak adds;
- 1st snapshot (everything new, 1 GiB spread over the files): `bak create` vs bare `rsync -a` (50,000 files);
- peak memory (VmHWM of every process of the run, summed): bak (Python + its rsync) vs bare rsync;
- full verify of a snapshot: `bak verify` vs `sha256sum -c` over the same files (50,000 files).
Medians of alternating rounds; ratios printed. Needs rsync, restic and sha256sum.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import bak_env, compare, ratio, wall
from bak.methods.rsync import PARALLEL_MAX, deal

SIZES = [int(s) for s in os.environ.get("BENCH_RSYNC_SIZES", "50000").split(",")]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
FIRST_TOTAL = int(os.environ.get("BENCH_FIRST_BYTES", str(1 << 30)))


def tree(root: Path, files: int, size: int) -> None:
    block = os.urandom(1 << 20)
    for i in range(files):
        folder = root / f"d{i % 1000:03d}"
        if i < 1000:
            folder.mkdir(parents=True, exist_ok=True)
        start = (i * 7919) % (len(block) - size) if size < len(block) else 0
        with open(folder / f"f{i}.dat", "wb") as handle:
            handle.write(i.to_bytes(8, "little") + block[start:start + max(size - 8, 0)])


def tree_of(pid: int) -> list[int]:
    """The process and its descendants, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    found, pending = [], [pid]
    while pending:
        found.append(pending.pop())
        pending += children.get(found[-1], [])
    return found


def timed(argv, env=None, cwd=None) -> float:
    return wall(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def peak_memory(argv, env=None) -> int:
    """The summed peak RSS (KiB) of the process tree, polled in a run of its own: polling /proc costs CPU
    that a timed run on 2 cores would share with what it measures."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in tree_of(proc.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM"):
                        peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))
            except OSError:
                pass
        time.sleep(0.05)
    if proc.wait() != 0:
        raise RuntimeError(f"{argv[:3]} failed")
    return sum(peaks.values())


def run_size(files: int, base: Path) -> bool:
    ok = True
    work = base / f"n{files}"
    source, store, state = work / "src", work / "store", work / "state"
    tree(source, files, 64)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"version": 1, "destinations": {"d": {"kind": "local", "path": str(store)}},
                                      "targets": [{"name": "tree", "method": "rsync", "destinations": ["d"],
                                                   "rsync": {"source": str(source)}}]}))
    env = bak_env(BAK_STATE_DIR=str(state))
    bak = [sys.executable, "-m", "bak", "create", "--config", str(config), "--json"]
    subprocess.run(bak, env=env, stdout=subprocess.DEVNULL, check=True)
    snapshots = store / "rsync" / "tree"
    first = next(p for p in snapshots.iterdir() if p.is_dir())
    # Bare rsync links against bak's own first snapshot: the same files to link to. (Against a copy made
    # apart, `rsync -a src/ base/`, it ran 24% faster in one run here, from where ext4 put those inodes.)
    bare_next = work / "bare-next"
    repo = work / "restic"
    restic_env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": "bench",
                  "RESTIC_CACHE_DIR": str(work / "restic-cache"), "RESTIC_PROGRESS_FPS": "0"}
    subprocess.run(["restic", "init"], env=restic_env, stdout=subprocess.DEVNULL, check=True)
    subprocess.run(["restic", "backup", str(source)], env=restic_env, stdout=subprocess.DEVNULL, check=True)

    def clean():
        for snapshot in snapshots.iterdir():
            if snapshot.name not in (first.name, first.name + ".manifest"):
                shutil.rmtree(snapshot) if snapshot.is_dir() else snapshot.unlink()
        shutil.rmtree(bare_next, ignore_errors=True)
        subprocess.run(["sync"])
        time.sleep(1.05)  # a new second: bak never reuses a snapshot name

    bare = ["rsync", "-a", f"--link-dest={first}", f"{source}/", f"{bare_next}/"]
    with os.scandir(os.fsencode(source)) as found:
        groups = deal([(e.name, e.is_dir(follow_symlinks=False)) for e in found], min(os.cpu_count() or 1, PARALLEL_MAX))

    def bare_parallel() -> float:
        """bak's split done by bare rsyncs (no listing, no manifest): what bak's own work adds to them."""
        start = time.perf_counter()
        bare_next.mkdir()
        procs = [subprocess.Popen(["rsync", "-a", "-r", "--files-from=-", "--from0", f"--link-dest={first}", f"{source}/",
                                   f"{bare_next}/"], stdin=subprocess.PIPE) for _ in groups]
        for proc, group in zip(procs, groups):  # every list first, then wait: all of them run at once
            proc.stdin.write(b"\0".join(group) + b"\0")
            proc.stdin.close()
        if any(proc.wait() for proc in procs):
            raise RuntimeError("a bare parallel rsync failed")
        return time.perf_counter() - start

    second = compare(f"2nd snapshot of an unchanged {files}-file tree", {
        "rsync -a --link-dest": lambda: timed(bare), "bak create": lambda: timed(bak, env),
        "restic backup (2nd)": lambda: timed(["restic", "backup", str(source)], restic_env),
        f"{len(groups)} bare rsyncs in parallel (bak's split)": bare_parallel}, rounds=ROUNDS, setup=clean)
    limit = 1.15 if files <= 50_000 else 1.05
    ok &= ratio("bak / rsync", second["bak create"], second["rsync -a --link-dest"], limit)
    ok &= ratio("bak / restic", second["bak create"], second["restic backup (2nd)"], 1.0)
    ratio("bak / the same split by bare rsyncs", second["bak create"],
          second[f"{len(groups)} bare rsyncs in parallel (bak's split)"])
    clean()
    rsync_peak = peak_memory(bare)
    clean()
    bak_peak = peak_memory(bak, env)
    print(f"  peak memory: bak {bak_peak / 1024:.1f} MiB (Python and its rsync), bare rsync {rsync_peak / 1024:.1f} MiB")
    ok &= ratio("memory bak / rsync", bak_peak, rsync_peak, 1.5)

    if files > 50_000:
        return ok  # the 1st snapshot and verify goals are set at 50,000 files
    # 1st snapshot: FIRST_TOTAL bytes in the same number of files, everything new.
    big = work / "big"
    tree(big, files, max(FIRST_TOTAL // files, 64))
    config.write_text(yaml.safe_dump({"version": 1, "destinations": {"d": {"kind": "local", "path": str(work / "fresh")}},
                                      "targets": [{"name": "big", "method": "rsync", "destinations": ["d"],
                                                   "rsync": {"source": str(big)}}]}))

    def fresh():
        for folder in (work / "fresh", work / "bare-fresh", state):
            shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(["sync"])

    first_run = compare(f"1st snapshot of {files} files, {FIRST_TOTAL >> 20} MiB", {
        "rsync -a": lambda: timed(["rsync", "-a", f"{big}/", f"{work / 'bare-fresh'}/"]),
        "bak create (checksums in the manifest)": lambda: timed(bak, env)}, rounds=ROUNDS, setup=fresh)
    ok &= ratio("bak / rsync", first_run["bak create (checksums in the manifest)"], first_run["rsync -a"], 1.15)

    # Full verify of that snapshot vs sha256sum -c over the same files (page cache warm for both).
    snapshot = next(p for p in (work / "fresh" / "rsync" / "big").iterdir() if p.is_dir())
    sums = work / "SHA256SUMS"
    with open(sums, "w") as handle:
        for path in sorted(snapshot.rglob("*.dat")):
            handle.write(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(snapshot)}\n")
    verify = [sys.executable, "-m", "bak", "verify", "--config", str(config), "--json"]
    checked = compare(f"full verify of {files} files, {FIRST_TOTAL >> 20} MiB", {
        "sha256sum -c": lambda: timed(["sha256sum", "-c", "--quiet", str(sums)], cwd=snapshot),
        "bak verify": lambda: timed(verify, env)}, rounds=ROUNDS)
    ok &= ratio("bak / sha256sum -c", checked["bak verify"], checked["sha256sum -c"], 1.0)
    return ok


def main() -> int:
    for tool in ("rsync", "restic", "sha256sum"):
        if not shutil.which(tool):
            print(f"{tool} is needed (bash tests/run.sh installs it)")
            return 2
    with tempfile.TemporaryDirectory(prefix="bak-bench-rsync-", dir=os.environ.get("BENCH_DIR")) as tmp:
        results = [run_size(files, Path(tmp)) for files in SIZES]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
