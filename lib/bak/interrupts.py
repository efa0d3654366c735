"""SIGTERM and Ctrl-C in the middle of work that must be undone (a container bak stopped).

Python turns Ctrl-C into KeyboardInterrupt, so `finally` blocks run; SIGTERM (systemd stopping a
timer's service, `kill PID`) ends the process at once by default. Inside `sigterm_raises()` it
raises `Terminated` (a KeyboardInterrupt) instead, so the same `finally` blocks run. Inside
`interrupts_deferred()` both signals wait until the block has finished, then raise.

SIGKILL cannot be caught: a killed bak leaves stopped containers stopped (its local children
die with it, see run/local.py's orphan guard; a remote tar ends with the SSH connection).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """bak received SIGTERM."""

    exit_code = 128 + signal.SIGTERM

    def __init__(self):
        super().__init__("terminated by SIGTERM")


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread while inside (signal handlers live only there)."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT received inside are raised when the block ends, not in the middle of it."""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if signal.SIGTERM in received:
            raise Terminated()
        if received:
            raise KeyboardInterrupt()
