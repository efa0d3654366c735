"""Issue 2: the atomic writer (stream to .partial, hash inline, fsync, rename, sidecar) vs `cat > file`.

Target: streaming 1 GiB through bak's writer <= 1.15x the wall time of `cat > file`.
bak also fsyncs (durability); `cat > file; sync file` is shown for the same guarantee.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, compare, ratio

SIZE = int(os.environ.get("BENCH_WRITER_MIB", "1024")) << 20
WRITER = f"""
import sys
sys.path.insert(0, {str(REPO / 'lib')!r})
from bak.stores.fanout import FanOut
from bak.stores.local import LocalStore
fan = FanOut([LocalStore("bench", sys.argv[1])], "x", "artifact.bin")
read = sys.stdin.buffer.raw.read
while chunk := read(1 << 20):
    fan.write(chunk)
fan.commit()
"""


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bak-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        source = tmp / "source.bin"
        with open(source, "wb") as handle:
            for _ in range(SIZE >> 20):
                handle.write(os.urandom(1 << 20))

        def clean():
            # Each contender starts with no dirty pages left by the previous one.
            for path in tmp.glob("out*"):
                path.unlink()
            subprocess.run(["rm", "-rf", str(tmp / "bak")])
            subprocess.run(["sync"])

        def bare():
            with open(source, "rb") as src, open(tmp / "out.bin", "wb") as dst:
                return _time(["cat"], stdin=src, stdout=dst)

        def bare_sync():
            with open(source, "rb") as src, open(tmp / "out2.bin", "wb") as dst:
                t = _time(["cat"], stdin=src, stdout=dst)
            return t + _time(["sync", str(tmp / "out2.bin")])

        def bare_hash_sync():
            t = _time(["bash", "-c", 'tee "$1" < "$2" | sha256sum > /dev/null', "bash", str(tmp / "out3.bin"), str(source)])
            return t + _time(["sync", str(tmp / "out3.bin")])

        def bak():
            with open(source, "rb") as src:
                return _time([sys.executable, "-c", WRITER, str(tmp / "bak")], stdin=src)

        ours = "bak writer (hash+fsync+rename+sidecar)"
        medians = compare(f"stream {SIZE >> 20} MiB", {
            "cat > file": bare, "cat > file; sync file": bare_sync,
            "tee file | sha256sum; sync file": bare_hash_sync, ours: bak}, setup=clean, rounds=5)
        ratio("bak / cat (no hash, no fsync)", medians[ours], medians["cat > file"], 1.15)
        ok = ratio("bak / (cat; sync): same durability", medians[ours], medians["cat > file; sync file"], 1.15)
        ratio("bak / (tee | sha256sum; sync): same work", medians[ours], medians["tee file | sha256sum; sync file"])
        return 0 if ok else 1


def _time(argv, **kwargs):
    from _common import wall

    return wall(argv, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
