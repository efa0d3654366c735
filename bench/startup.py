"""Issue 2: cold start of `bak --help` and `bak config check` (< 0.25 s), next to a bare `python -c pass`."""

import subprocess
import sys
import tempfile
from pathlib import Path

from _common import bak_env, compare


def main() -> int:
    env = bak_env()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(subprocess.run([sys.executable, "-m", "bak", "config", "example"], env=env,
                                         capture_output=True, text=True, check=True).stdout)

        def timed(argv):
            def run():
                from _common import wall

                return wall(argv, env=env, stdout=subprocess.DEVNULL)
            return run

        medians = compare("cold start (median of 7)", {
            "python -c pass": timed([sys.executable, "-c", "pass"]),
            "bak --help": timed([sys.executable, "-m", "bak", "--help"]),
            "bak config check --json": timed([sys.executable, "-m", "bak", "config", "check", "--config", str(config), "--json"]),
        }, rounds=7)
    ok = medians["bak --help"] < 0.25 and medians["bak config check --json"] < 0.25
    print(f"  under 0.25 s: {'yes' if ok else 'NO'}; paramiko imported by --help: "
          + subprocess.run([sys.executable, "-c", "import sys; import bak.cli; print('paramiko' in sys.modules)"],
                           env=env, capture_output=True, text=True).stdout.strip())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
