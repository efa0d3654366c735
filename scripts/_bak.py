"""Shared by the /bak-* scripts: run one bak command from this folder, JSON on stdout.

A plugin is just this folder, run by whatever `python3` the machine has. When that Python lacks
bak's dependencies, the first script run sets up bak's own environment: a venv in the user data
folder with the pins of requirements.lock, built once under a file lock (two first runs at once
do not fight), reused afterwards, rebuilt when bak's version or the pins change. The script then
runs again with that venv's Python. Progress goes to stderr; a failure (no network for pip) is one
JSON envelope with exit 3 and the command that fixes it.

This file is the one place outside lib/bak/run/ that starts processes (venv, pip, the re-run): it
runs before bak and its dependencies can be imported. Argv lists only, never a shell. It must
keep parsing on old Pythons, to say which Python bak needs instead of a SyntaxError.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
LIB = SCRIPTS.parent / "lib"
REQUIREMENTS = SCRIPTS / "requirements.lock"
# The import name of each distribution that pyproject.toml lists as a dependency.
MODULES = {"click": "click", "paramiko": "paramiko", "pyyaml": "yaml", "jsonschema": "jsonschema",
           "platformdirs": "platformdirs", "filelock": "filelock", "rich": "rich", "zstandard": "zstandard",
           "apprise": "apprise"}
RERUN_MARK = "BAK_ENV_READY"  # set for the second run, so a broken environment cannot loop
EXIT_REFUSED = 3

sys.path.insert(0, str(LIB))


def run(command: str) -> None:
    args = sys.argv[1:]
    started = datetime.now(timezone.utc)
    if sys.version_info < (3, 11):
        _refuse(command, args, started, "python_too_old",
                f"bak needs Python 3.11 or newer; this is {sys.version.split()[0]}",
                "Run the script with a newer python3 (python3.11 or later).", where=sys.executable)
    missing = [name for name, module in MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        if os.environ.get(RERUN_MARK):
            _refuse(command, args, started, "environment_broken",
                    f"bak's environment lacks {', '.join(missing)} after its setup ({sys.executable})",
                    f"Remove {data_dir()} and run the command again: bak sets its environment up anew.")
        _rerun_with(ensure_environment(command, args, started), args)

    from bak import front
    from bak.cli import cli, main

    front.use_slash_commands(SCRIPTS, sorted(cli.commands))  # hints name /bak-* commands, not `bak`
    if not args and hasattr(cli.commands[command], "commands"):
        args = ["--help"]  # a group with nothing to run: show its subcommands
    if not {"--help", "-h"} & set(args):
        args = [*args, "--json"]
    main([command, *args])


# --- where bak's environment lives ------------------------------------------------------------
def data_dir() -> Path:
    """The user data folder, as platformdirs gives it (platformdirs is not importable yet)."""
    home = Path.home()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "bak"


def bak_version() -> str:
    import bak  # lib/bak/__init__.py imports nothing

    return bak.__version__


def venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def wanted_marker() -> dict:
    return {"version": bak_version(), "requirements_sha256": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()}


def _ready(env_dir: Path, wanted: dict) -> bool:
    try:
        found = json.loads((env_dir / "bak-env.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return found == wanted and venv_python(env_dir).exists()


def ensure_environment(command: str, args: list[str], started: datetime) -> Path:
    """The Python of bak's environment, built first if it is missing or out of date."""
    wanted = wanted_marker()
    base = data_dir()
    env_dir = base / f"env-{wanted['version']}"
    if _ready(env_dir, wanted):
        return venv_python(env_dir)
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / "env.lock"):
        if not _ready(env_dir, wanted):  # another first run may have built it while we waited
            _build(env_dir, wanted, command, args, started)
        for old in base.glob("env-*"):
            if old != env_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)  # an older version's environment
    return venv_python(env_dir)


def _build(env_dir: Path, wanted: dict, command: str, args: list[str], started: datetime) -> None:
    clock = time.monotonic()
    _progress(f"setting up bak's Python environment (once for version {wanted['version']}) in {env_dir}")
    shutil.rmtree(env_dir, ignore_errors=True)  # an incomplete one: no marker was written
    python = venv_python(env_dir)
    steps = [
        ("creating the venv", [sys.executable, "-m", "venv", str(env_dir)],
         "Install Python's venv module (Debian/Ubuntu: apt-get install python3-venv) and run the command again."),
        (f"installing the pins of {REQUIREMENTS.name} with pip",
         [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
          "--progress-bar", "off", "-r", str(REQUIREMENTS)], None),
    ]
    for title, argv, hint in steps:
        _progress(title + " ...")
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if out.returncode != 0:
            tail = [line for line in out.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
            sys.stderr.write("\n".join(tail[-20:]) + "\n")
            shutil.rmtree(env_dir, ignore_errors=True)
            tls = any("CERTIFICATE_VERIFY_FAILED" in line for line in tail)
            _refuse(command, args, started, "environment_setup_failed",
                    f"bak could not set up its Python environment ({title} failed: "
                    f"{tail[-1].strip() if tail else 'exit ' + str(out.returncode)})"
                    + ("; pip could not verify the package index's TLS certificate" if tls else ""),
                    hint or ("Point pip at your CA bundle (PIP_CERT=/path/to/ca.pem, or `cert` in pip.conf), then "
                             "run again. " if tls else "") + _offline_hint(args))
    marker = env_dir / "bak-env.json"
    marker.with_suffix(".partial").write_text(json.dumps(wanted), encoding="utf-8")
    os.replace(marker.with_suffix(".partial"), marker)  # written last: its presence means complete
    _progress(f"environment ready in {time.monotonic() - clock:.0f}s; later runs reuse it")


def _offline_hint(args: list[str]) -> str:
    again = shlex.join([sys.executable, os.path.abspath(sys.argv[0]), *args])
    return (f"pip needs the network once (PyPI, or the mirror in PIP_INDEX_URL). When it is back, run: {again} . "
            f"Without network: on a machine that has it, run `python3 -m pip download -r {REQUIREMENTS} -d bak-wheels`, "
            f"copy bak-wheels here, then run: PIP_NO_INDEX=1 PIP_FIND_LINKS=bak-wheels {again}")


@contextmanager
def _locked(path: Path):
    """An OS lock on `path`, released by the kernel if this process dies."""
    with open(path, "a+b") as handle:
        if os.name == "nt":
            import msvcrt

            def try_lock() -> bool:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                    return True
                except OSError:
                    return False

            if not try_lock():
                _progress("waiting for another bak run to finish setting up its environment ...")
                while not try_lock():
                    time.sleep(0.5)
        else:
            import fcntl

            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                _progress("waiting for another bak run to finish setting up its environment ...")
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _progress(text: str) -> None:
    sys.stderr.write(f"bak: {text}\n")
    sys.stderr.flush()


def _rerun_with(python: Path, args: list[str]) -> None:
    argv = [str(python), os.path.abspath(sys.argv[0]), *args]
    env = {**os.environ, RERUN_MARK: "1"}
    if os.name == "nt":  # Windows has no exec that keeps the process: wait and pass the exit code on
        sys.exit(subprocess.call(argv, env=env))
    sys.stdout.flush()
    os.execve(str(python), argv, env)


def _refuse(command: str, args: list[str], started: datetime, code: str, message: str, hint: str,
            where: str | None = None) -> None:
    """One envelope (lib/bak/schemas/envelope.json) and exit 3: nothing was done."""
    name = command + (f" {args[0]}" if args and not args[0].startswith("-") else "")
    error = {"code": code, "message": message, "where": where or str(data_dir()), "hint": hint}
    json.dump({"command": name, "ok": False, "started_at": started.isoformat(timespec="seconds"),
               "duration_s": round((datetime.now(timezone.utc) - started).total_seconds(), 3),
               "result": None, "warnings": [], "errors": [error]}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    sys.exit(EXIT_REFUSED)
