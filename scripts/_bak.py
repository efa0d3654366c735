"""Shared by the /bak-* scripts: run one bak command from this checkout, JSON on stdout.

Diagnostics and progress go to stderr. Nothing here prompts: the agent cannot answer.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))


def run(command: str, *, json_output: bool = True) -> None:
    from bak.cli import cli, main

    args = sys.argv[1:]
    if not args and hasattr(cli.commands[command], "commands"):
        args = ["--help"]  # a group with nothing to run: show its subcommands
    if json_output and not {"--help", "-h"} & set(args):
        args = [*args, "--json"]
    main([command, *args])
