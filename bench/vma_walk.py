"""Issue 15: bak's one-pass VMA walk (header md5, every extent header md5, one bit per cluster) over
`.vma.zst` archives of sparse disks of 64 MiB, 2 GiB and 32 GiB, each in its own process:
peak RSS (VmHWM, Linux) above the same process that only imports, and time against `zstd -dc FILE > /dev/null`.

Target: memory flat, the 32 GiB walk within 1 MiB of the 2 GiB one. What a walk holds above the
imports is zstd's window (up to 2 MiB at vzdump's level) and one 1 MiB read, whatever the disk size;
the 64 MiB archive is too small to fill either.
The archives come from the Proxmox stand-in's writer (tests/standins/pve/_pve.py), as vzdump pipes
them through zstd; the disks hold 64 KiB of data every 32 MiB.
"""

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, compare

sys.path.insert(0, str(REPO / "tests" / "standins" / "pve"))
os.environ.setdefault("BAK_PVE_ROOT", "/nonexistent")  # the writer takes paths; nothing else is used
import _pve  # noqa: E402

# VmHWM, this process's own peak RSS (ru_maxrss would carry over the parent's peak through fork and exec).
WALK = f"""
import sys
sys.path.insert(0, {str(REPO / 'lib')!r})
import zstandard
from bak import vma
if sys.argv[2] == "walk":
    with open(sys.argv[1], "rb") as raw:
        info = vma.read(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), walk_extents=True)
    print(info.extents, info.clusters, end=" ")
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def archive_of(tmp: Path, size: int) -> Path:
    image = tmp / f"disk-{size}.raw"
    with open(image, "wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, 32 << 20):
            handle.seek(offset)
            handle.write(random.Random(offset).randbytes(65536))
    archive = tmp / f"vzdump-qemu-100-{size}.vma.zst"
    with open(archive, "wb") as out:
        zstd = subprocess.Popen(["zstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=out)
        _pve.write_vma(zstd.stdin, [("qemu-server.conf", b"name: bench\n")], [("drive-scsi0", image)], 0, "bench")
        zstd.stdin.close()
        zstd.wait()
    image.unlink()
    return archive


def main() -> int:
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="bak-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        for size in (64 << 20, 2 << 30, 32 << 30):
            archive = archive_of(Path(tmp), size)
            base = subprocess.run([sys.executable, "-c", WALK, str(archive), "import"], capture_output=True, text=True,
                                  check=True).stdout.split()
            started = time.perf_counter()
            walk = subprocess.run([sys.executable, "-c", WALK, str(archive), "walk"], capture_output=True, text=True,
                                  check=True).stdout.split()
            elapsed = time.perf_counter() - started
            peaks[size] = int(walk[2]) - int(base[0])
            print(f"\n{size >> 20} MiB disk, {archive.stat().st_size >> 10} KiB archive: {walk[0]} extents, {walk[1]} clusters "
                  f"in {elapsed:.2f} s; peak RSS {int(walk[2])} KiB, {peaks[size]} KiB above importing only")
            compare(f"walk vs decompression alone ({size >> 20} MiB disk)", {
                "zstd -dc > /dev/null": lambda: _timed(["zstd", "-q", "-dc", str(archive)]),
                "bak walk (whole process)": lambda: _timed([sys.executable, "-c", WALK, str(archive), "walk"]),
            }, rounds=3)
    flat = abs(peaks[32 << 30] - peaks[2 << 30]) < 1024
    print(f"\nmemory flat (32 GiB within 1 MiB of 2 GiB): {'OK' if flat else 'NO'}; KiB above imports: {peaks}")
    return 0 if flat else 1


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
