"""Secrets are read from references (file, env var, .pgpass) and scrubbed from every output.

Every secret value read through `read_secret` is registered, and `scrub` replaces it in any
text bound for JSON, the journal or logs: a second line of defence behind never putting
secrets in argv or output in the first place.
"""

from __future__ import annotations

import os
from pathlib import Path

from bak.errors import BadInput

_KNOWN: set[str] = set()
_SECRET_ENV: set[str] = set()
MASK = "********"


def declare_env(names) -> None:
    """Environment variables the config names as secrets: children of bak never inherit them."""
    _SECRET_ENV.update(names)


def secret_env_names() -> frozenset[str]:
    return frozenset(_SECRET_ENV)


def read_secret(ref: dict, where: str) -> str | None:
    """The secret a `{file|env|pgpass}` reference points to; None for pgpass (the tool reads it)."""
    if "env" in ref:
        value = os.environ.get(ref["env"])
        if value is None:
            raise BadInput(f"environment variable {ref['env']} (the secret for {where}) is not set", where=where,
                           hint=f"Export {ref['env']} in the environment that runs bak (cron/systemd: an EnvironmentFile).")
    elif "file" in ref:
        path = Path(ref["file"]).expanduser()
        try:
            _check_private(path, where)
            value = path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
        except FileNotFoundError:
            raise BadInput(f"secret file {path} for {where} does not exist", where=where) from None
    else:
        path = Path(ref["pgpass"]).expanduser()
        if not path.is_file():
            raise BadInput(f"passfile {path} for {where} does not exist", where=where)
        _check_private(path, where)
        return None
    register(value)
    return value


def _check_private(path: Path, where: str) -> None:
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise BadInput(f"secret file {path} for {where} is readable by others", where=where,
                       hint=f"chmod 600 {path}")


def register(value: str) -> None:
    if value and len(value) >= 3:
        _KNOWN.add(value)


def scrub(text: str) -> str:
    for value in _KNOWN:
        if value in text:
            text = text.replace(value, MASK)
    return text


def scrub_obj(obj):
    if not _KNOWN:
        return obj
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {k: scrub_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_obj(v) for v in obj]
    return obj
