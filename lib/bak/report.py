"""The JSON envelope every command prints, its result schemas, and the human view."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from bak.errors import EXIT_OK, EXIT_PROBLEMS, BakError
from bak.secrets import scrub_obj

_SCHEMAS = Path(__file__).parent / "schemas"


@dataclass
class Outcome:
    """What an action hands back: its result, plus problems found (exit 1) and warnings."""

    result: dict
    warnings: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    worst_exit: int = EXIT_OK

    def problem(self, code: str, message: str, where: str | None = None, hint: str | None = None) -> None:
        self._add({"code": code, "message": message, "where": where, "hint": hint})
        self.worst_exit = max(self.worst_exit, EXIT_PROBLEMS)

    def failed(self, exc: BakError) -> None:
        """Record a library error and keep its exit code (a refusal stays 3)."""
        self._add(exc.to_error())
        self.worst_exit = max(self.worst_exit, exc.exit_code)

    def _add(self, error: dict) -> None:
        """Once: an unreachable host met by three targets is one error, not three."""
        if error not in self.errors:
            self.errors.append(error)

    @property
    def exit_code(self) -> int:
        return max(self.worst_exit, EXIT_PROBLEMS if self.errors else EXIT_OK)


_NOTICES: list[str] = []


def notice(text: str) -> None:
    """A warning found deep in the library (a journal set aside) for this command's envelope."""
    _NOTICES.append(text)


def envelope(command: str, started: datetime, duration_s: float, result: Any,
             warnings: list[str], errors: list[dict]) -> dict:
    warnings = [*_NOTICES, *warnings]
    _NOTICES.clear()
    return scrub_obj({
        "command": command,
        "ok": not errors,
        "started_at": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3),
        "result": result,
        "warnings": warnings,
        "errors": errors,
    })


# Subcommands that are another command under a narrower name share its result schema.
SCHEMA_ALIASES = {"pg-dump": "create", "pg-verify": "verify", "pg-restore": "restore", "drill": "pg-drill",
                  "schedule-show": "schedule", "schedule-install": "schedule", "schedule-remove": "schedule"}


@lru_cache(maxsize=None)
def result_schema(command: str) -> dict:
    """The JSON Schema of a command's `result`, by the envelope's `command` (`config check` or `config-check`)."""
    name = command.replace(" ", "-")
    name = SCHEMA_ALIASES.get(name, name)
    return json.loads((_SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))


def schema_names() -> list[str]:
    return sorted(p.stem for p in _SCHEMAS.glob("*.json") if p.name != "envelope.json")


def emit(env: dict, as_json: bool, human: Callable[[dict], None] | None) -> None:
    if as_json:
        json.dump(env, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    if human and env["result"] is not None:
        human(env["result"])
    import click

    for warning in env["warnings"]:
        click.echo(click.style("warning: ", fg="yellow") + warning, err=True)
    for error in env["errors"]:
        where = f" [{error['where']}]" if error.get("where") else ""
        click.echo(click.style("error:", fg="red") + f"{where} {error['message']}", err=True)
        if error.get("hint"):
            click.echo(click.style("  hint: ", dim=True) + error["hint"], err=True)


def say(text: str) -> None:
    """One plain line for humans (rich is only worth importing for tables)."""
    import click

    click.echo(text)


def stdout_console():
    from rich.console import Console

    return Console(highlight=False)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    view = Table(title=title, title_justify="left")
    for column in columns:
        view.add_column(column, overflow="fold")
    for row in rows:
        view.add_row(*("" if v is None else str(v) for v in row))
    stdout_console().print(view)


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
