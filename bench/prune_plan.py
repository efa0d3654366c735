"""Issue 3: a prune plan over 100,000 backups in < 1 s (the spec's standard policy)."""

import sys
import time
from datetime import datetime, timedelta

from _common import REPO  # noqa: F401  (puts lib/ on sys.path)
from bak.retention import Candidate, plan


def main() -> int:
    start = datetime(2026, 11, 30, 23, 0)
    backups = [Candidate(f"pg-app-{i}", start - timedelta(minutes=15 * i), protected=i % 997 == 0) for i in range(100_000)]
    policy = {"keep_last": 3, "keep_hourly": 24, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2}
    times = []
    for _ in range(5):
        began = time.perf_counter()
        decisions = plan(backups, policy)
        times.append(time.perf_counter() - began)
    best = sorted(times)[len(times) // 2]
    print(f"\nprune plan, 100,000 backups, all six rules: median {best:.3f} s "
          f"({sum(d.keep for d in decisions)} kept) {'OK' if best < 1 else 'OVER 1 s'}")
    return 0 if best < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
