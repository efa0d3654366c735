"""One OS lock per target: a second run on the same target is refused and told who holds it.

filelock uses flock/LockFileEx, so the kernel releases the lock when the holder dies:
a SIGKILLed run never leaves a lock behind.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from bak.errors import LockHeld
from bak.paths import ensure_private_dir, state_dir


def _lock_dir() -> Path:
    return ensure_private_dir(state_dir() / "locks")


@contextmanager
def target_lock(target: str, action: str) -> Iterator[None]:
    import filelock

    folder = _lock_dir()
    lock = filelock.FileLock(str(folder / f"{target}.lock"), timeout=0, thread_local=False)
    holder_file = folder / f"{target}.holder.json"
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = _read_holder(holder_file)
        who = (f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('action')}, since {holder.get('since')})"
               if holder else "another bak process")
        raise LockHeld(f"target {target} is locked by {who}", where=target,
                       hint="Wait for that run to finish; a crashed run releases its lock by itself.",
                       details={"holder": holder}) from None
    try:
        holder_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "action": action,
                                           "argv": sys.argv[1:], "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()


def is_locked(target: str) -> bool:
    import filelock

    lock = filelock.FileLock(str(_lock_dir() / f"{target}.lock"), timeout=0, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
