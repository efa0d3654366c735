"""Where the user runs bak, so that every hint names a command that exists there.

From a terminal that is the `bak` command. Through Claude Code, the /bak-* scripts run bak and there
is no `bak` on the PATH: `bak verify --target db` must read `/bak-verify --target db` (a plugin's
commands are namespaced: `/backup-skill:bak-verify`). The scripts say which (scripts/_bak.py), and the
envelope's texts are rewritten once, at the boundary (report.envelope), instead of at every hint.
"""

from __future__ import annotations

import re
from pathlib import Path

PLUGIN = "backup-skill"  # the plugin's and the skill's name (SKILL.md, .claude-plugin/plugin.json)
_SLASH: dict = {"prefix": None, "pattern": None}  # set when the /bak-* scripts run bak


def use_slash_commands(scripts: Path, commands: list[str]) -> None:
    """Called by the /bak-* scripts with bak's command names: hints name slash commands, plain when
    installed by `bak skill install` (the scripts live in .claude/skills/backup-skill/scripts), namespaced
    in a plugin."""
    installed = scripts.parent.name == PLUGIN and scripts.parent.parent.name == "skills"
    _SLASH["prefix"] = "/bak-" if installed else f"/{PLUGIN}:bak-"
    # not in a path, an address, or after `python -m` (a cron line runs the module)
    _SLASH["pattern"] = re.compile(r"(?<![\w/.@:-])(?<!-m )bak (?=(?:%s)\b)" % "|".join(map(re.escape, commands)))


def slash_prefix() -> str | None:
    return _SLASH["prefix"]


def command(words: str) -> str:
    """`status --config F` as the user runs it here: `bak status --config F`, or `/bak-status --config F`."""
    return rewrite(f"bak {words}")


def rewrite(text: str) -> str:
    """`bak status --help` as the user can run it here: `/bak-status --help` under Claude Code."""
    if _SLASH["prefix"] is None or "bak " not in text:
        return text
    return _SLASH["pattern"].sub(_SLASH["prefix"], text)


DOCUMENTS = ("content", "text")  # files and documents as bak writes them: shown as they are


def rewrite_all(node):
    """Every string of an envelope, rewritten; not the contents of files (a crontab, the config example)."""
    if _SLASH["prefix"] is None:
        return node
    if isinstance(node, str):
        return rewrite(node)
    if isinstance(node, list):
        return [rewrite_all(item) for item in node]
    if isinstance(node, dict):
        return {key: value if key in DOCUMENTS else rewrite_all(value) for key, value in node.items()}
    return node
