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
    from bak.front import rewrite_all

    warnings = [*_NOTICES, *warnings]
    _NOTICES.clear()
    return rewrite_all(scrub_obj({
        "command": command,
        "ok": not errors,
        "started_at": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3),
        "result": result,
        "warnings": warnings,
        "errors": errors,
    }))


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


def emit(env: dict, as_json: bool, human: Callable[[dict], None] | None, limit: int | None = None) -> None:
    """JSON: the envelope as the agent can read it whole (bak.digest), compact unless a person watches."""
    if as_json:
        from bak import digest, paths

        shown = digest.fit(env, limit, paths.state_dir)
        if sys.stdout.isatty():
            json.dump(shown, sys.stdout, indent=2, default=str)
        else:
            json.dump(shown, sys.stdout, separators=(",", ":"), default=str)
        sys.stdout.write("\n")
        return
    if human and env["result"] is not None:
        human(env["result"])
    for warning in env["warnings"]:
        say(warning, err=True, label="warning: ", label_style={"fg": "yellow"})
    from bak.digest import group_errors

    for error in group_errors(env["errors"]):  # a problem of many targets, once
        where = f"[{error['where']}] " if error.get("where") else ""
        say(where + error["message"], err=True, label="error: ", label_style={"fg": "red"})
        if error.get("hint"):
            say(error["hint"], err=True, label="  hint: ", label_style={"dim": True})


def say(text: str, err: bool = False, label: str = "", label_style: dict | None = None, **style) -> None:
    """Plain lines for humans, wrapped between words at the terminal's width (rich only for tables).
    `label` starts the first line, styled with `label_style`; `style` (click.style's) colours every line."""
    import shutil
    import textwrap

    import click

    width = shutil.get_terminal_size((80, 24)).columns
    for number, line in enumerate((label + text).splitlines() or [""]):
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        pieces = [line] if len(line) <= width else textwrap.wrap(
            line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)
        for index, piece in enumerate(pieces):
            piece = click.style(piece, **style) if style else piece
            if label and number == index == 0:
                piece = click.style(label, **(label_style or {})) + piece[len(label):]
            click.echo(piece, err=err)


def stdout_console():
    from rich.console import Console

    return Console(highlight=False)


WRAPPED_MIN = 24


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """One line per row at any width: columns a space apart under one rule, each as wide as its longest
    value, but the widest (the free text: an error, a problem), which wraps between words and keeps
    WRAPPED_MIN characters. Only when even that cannot fit, one block of `column value` lines per row.
    A narrow terminal never splits a header or a word."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    plain = [[Text.from_markup(v).plain for v in row] for row in cells]
    heads = [Text.from_markup(c).plain for c in columns]
    separators = len(columns) - 1
    natural = [max(len(text) for text in [heads[i], *(r[i] for r in plain)]) for i in range(len(columns))]
    longest_word = [max(len(w) for text in [heads[i], *(r[i] for r in plain)] for w in text.split() or [""])
                    for i in range(len(columns))]
    flexible = natural.index(max(natural))  # the one column that may wrap, between words, ...
    narrowest = min(natural[flexible], max(longest_word[flexible], WRAPPED_MIN))  # ... never to a word a line
    if sum(natural) - natural[flexible] + narrowest + separators <= console.width:
        view = Table(title=title, title_justify="left", title_style="italic", box=box.SIMPLE_HEAD, padding=0,
                     show_edge=False, pad_edge=False, header_style="bold")
        for index, column in enumerate(columns):
            if index == flexible:
                view.add_column(column, min_width=narrowest)
            else:
                view.add_column(column, no_wrap=True, min_width=natural[index])
        for row in cells:
            view.add_row(*row)
        console.print(view)
        return
    console.print(title, style="italic", markup=False)
    key_width = max(len(h) for h in heads)
    for row in cells:
        block = Table.grid(padding=(0, 1))
        block.add_column(width=key_width + 1, no_wrap=True, style="bold")
        block.add_column()
        for head, value in zip(columns, row):
            if Text.from_markup(value).plain.strip():
                block.add_row(head, value)
        console.print(block)
        console.print()


def short_time(text: str | None) -> str:
    """`12-07 00:07` for a time this year (a table's column), `2025-12-07` for an older one."""
    if not text:
        return "-"
    from datetime import datetime as _datetime

    try:
        when = _datetime.fromisoformat(text)
    except ValueError:
        return text
    now = _datetime.now(when.tzinfo)
    return f"{when:%m-%d %H:%M}" if when.year == now.year else f"{when:%Y-%m-%d}"


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
