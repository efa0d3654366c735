"""File snapshots against the bare tools, in the same run (issue 17).

For each size (BENCH_RSYNC_SIZES, default 50000; 500000 for the full run):
- 2nd snapshot of an unchanged tree: `bak create` vs bare `rsync -a --link-dest` vs restic's 2nd backup;
- 1st snapshot (everything new, 1 GiB spread over the files): `bak create` vs bare `rsync -a`;
- peak memory (VmHWM of every process of the run, summed): bak (Python + its rsync) vs bare rsync;
- full verify of a snapshot: `bak verify` vs `sha256sum -c` over the same files.
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

from _common import bak_env, compare, ratio

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


def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == current:
                    pending.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def timed(argv, env=None, measure_memory=False, cwd=None) -> tuple[float, int]:
    """Wall time, and with measure_memory the summed peak RSS (KiB) of the process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    peaks: dict[int, int] = {}
    while measure_memory and proc.poll() is None:
        for pid in descendants(proc.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM"):
                        peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))
            except OSError:
                pass
        time.sleep(0.05)
    if proc.wait() != 0:
        raise RuntimeError(f"{argv[:3]} failed")
    return time.perf_counter() - started, sum(peaks.values())


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
    bare_base, bare_next = work / "bare-base", work / "bare-next"
    subprocess.run(["rsync", "-a", f"{source}/", f"{bare_base}/"], check=True)
    repo = work / "restic"
    restic_env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": "bench",
                  "RESTIC_CACHE_DIR": str(work / "restic-cache"), "RESTIC_PROGRESS_FPS": "0"}
    subprocess.run(["restic", "init"], env=restic_env, stdout=subprocess.DEVNULL, check=True)
    subprocess.run(["restic", "backup", str(source)], env=restic_env, stdout=subprocess.DEVNULL, check=True)
    memory: dict[str, list[int]] = {"bak": [], "rsync": []}

    def clean():
        for snapshot in snapshots.iterdir():
            if snapshot.name not in (first.name, first.name + ".manifest"):
                shutil.rmtree(snapshot) if snapshot.is_dir() else snapshot.unlink()
        shutil.rmtree(bare_next, ignore_errors=True)
        subprocess.run(["sync"])
        time.sleep(1.05)  # a new second: bak never reuses a snapshot name

    def ours():
        seconds, peak = timed(bak, env, measure_memory=True)
        memory["bak"].append(peak)
        return seconds

    def bare():
        seconds, peak = timed(["rsync", "-a", f"--link-dest={bare_base}", f"{source}/", f"{bare_next}/"],
                              measure_memory=True)
        memory["rsync"].append(peak)
        return seconds

    def restic():
        return timed(["restic", "backup", str(source)], restic_env)[0]

    second = compare(f"2nd snapshot of an unchanged {files}-file tree", {
        "rsync -a --link-dest": bare, "bak create": ours, "restic backup (2nd)": restic}, rounds=ROUNDS, setup=clean)
    limit = 1.15 if files <= 50_000 else 1.05
    ok &= ratio("bak / rsync", second["bak create"], second["rsync -a --link-dest"], limit)
    ok &= ratio("bak / restic", second["bak create"], second["restic backup (2nd)"], 1.0)
    bak_peak, rsync_peak = max(memory["bak"]), max(memory["rsync"])
    print(f"  peak memory: bak {bak_peak / 1024:.1f} MiB (Python and its rsync), bare rsync {rsync_peak / 1024:.1f} MiB")
    ok &= ratio("memory bak / rsync", bak_peak, rsync_peak, 1.5)

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
        "rsync -a": lambda: timed(["rsync", "-a", f"{big}/", f"{work / 'bare-fresh'}/"])[0],
        "bak create (checksums in the manifest)": lambda: timed(bak, env)[0]}, rounds=ROUNDS, setup=fresh)
    ok &= ratio("bak / rsync", first_run["bak create (checksums in the manifest)"], first_run["rsync -a"], 1.15)

    # Full verify of that snapshot vs sha256sum -c over the same files (page cache warm for both).
    snapshot = next(p for p in (work / "fresh" / "rsync" / "big").iterdir() if p.is_dir())
    sums = work / "SHA256SUMS"
    with open(sums, "w") as handle:
        for path in sorted(snapshot.rglob("*.dat")):
            handle.write(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(snapshot)}\n")
    verify = [sys.executable, "-m", "bak", "verify", "--config", str(config), "--json"]
    checked = compare(f"full verify of {files} files, {FIRST_TOTAL >> 20} MiB", {
        "sha256sum -c": lambda: timed(["sha256sum", "-c", "--quiet", str(sums)], cwd=snapshot)[0],
        "bak verify": lambda: timed(verify, env)[0]}, rounds=ROUNDS)
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
