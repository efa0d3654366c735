"""Issue 5: the second snapshot of an unchanged 10,000-file tree, `bak create` vs bare
`rsync -a --link-dest` (target <= 1.1x), in the same run."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from _common import REPO, compare, ratio, wall

FILES = int(os.environ.get("BENCH_RSYNC_FILES", "10000"))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bak-bench-rsync-", dir=os.environ.get("BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        source = tmp / "src"
        for i in range(FILES):
            folder = source / f"d{i % 100}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i}.txt").write_bytes(os.urandom(2048))
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump({"version": 1, "destinations": {"d": {"kind": "local", "path": str(tmp / "bak")}},
                                          "targets": [{"name": "tree", "method": "rsync", "destinations": ["d"],
                                                       "rsync": {"source": str(source)}}]}))
        env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), "BAK_STATE_DIR": str(tmp / "state")}
        bak = [sys.executable, "-m", "bak", "create", "--config", str(config), "--json"]
        subprocess.run(bak, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        first = next(p for p in (tmp / "bak" / "rsync").iterdir() if p.is_dir())
        bare_base = tmp / "bare-base"
        subprocess.run(["rsync", "-a", f"{source}/", f"{bare_base}/"], check=True)

        def bare():
            target = tmp / "bare-next"
            shutil.rmtree(target, ignore_errors=True)
            return wall(["rsync", "-a", f"--link-dest={bare_base}", f"{source}/", f"{target}/"])

        def ours():
            for snapshot in (tmp / "bak" / "rsync").iterdir():
                if snapshot.name not in (first.name, first.name + ".manifest"):
                    subprocess.run(["rm", "-rf", str(snapshot)])
            return wall(bak, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        medians = compare(f"2nd snapshot of an unchanged {FILES}-file tree", {
            "rsync -a --link-dest": bare, "bak create (rsync + manifest)": ours}, rounds=5,
            setup=lambda: subprocess.run(["sync"]))
        ok = ratio("bak / rsync", medians["bak create (rsync + manifest)"], medians["rsync -a --link-dest"], 1.1)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
