"""Shared by the benchmarks: timing that alternates bak and the bare tool, and ratios."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))


def bak_env(**extra: str) -> dict[str, str]:
    """The environment bak runs in, as installed: from this checkout, with its compiled bytecode (an
    environment that sets PYTHONDONTWRITEBYTECODE would have every run compile bak's source again)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(REPO / "lib"), **extra}


def wall(argv: list[str], ok_codes: tuple[int, ...] = (0,), **kwargs) -> float:
    start = time.perf_counter()
    code = subprocess.run(argv, **kwargs).returncode
    if code not in ok_codes:
        raise RuntimeError(f"{argv[:4]} exited {code}")
    return time.perf_counter() - start


def compare(label: str, runs: dict, rounds: int = 3, setup=None) -> dict[str, float]:
    """Median wall time of each contender, run alternately so drift hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            if setup:
                setup()
            times[name].append(fn())
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{label}")
    for name, value in medians.items():
        print(f"  {name:<40} {value:8.3f} s")
    return medians


def ratio(label: str, ours: float, theirs: float, limit: float | None = None, lower_is_better: bool = True) -> bool:
    value = ours / theirs
    verdict = "" if limit is None else ("  OK" if value <= limit else f"  OVER the {limit}x target")
    print(f"  ratio {label}: {value:.2f}x{verdict}")
    return limit is None or value <= limit
