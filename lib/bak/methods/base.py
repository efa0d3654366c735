"""What every method gets (Context) and provides (Method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from bak.catalog import Backup
from bak.config import Config, Target
from bak.journal import Journal, Operation
from bak.run import Hosts
from bak.stores import Store


@dataclass
class Context:
    config: Config
    hosts: Hosts
    journal: Journal
    now: datetime
    progress: Callable[[str], None] = lambda message: None
    warnings: list[str] = field(default_factory=list)


class Method:
    name: str

    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        """Make one backup of `target` into every store; returns the per-target result."""
        raise NotImplementedError

    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """Check one backup: checksum plus the format's own check. Raises VerifyFailed."""
        raise NotImplementedError

    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        raise NotImplementedError

    def drill(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """Restore somewhere scratch, check what came back, remove it; raises VerifyFailed on a mismatch."""
        raise NotImplementedError
