"""Where bak keeps its config and state on each platform (XDG, AppData, Library)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "bak"


def config_file() -> Path:
    """--config wins (handled by the CLI), then $BAK_CONFIG, then the user config folder."""
    env = os.environ.get("BAK_CONFIG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "config.yaml"


# The state folder a command was given: --state-dir ("option"), the config's state_dir key ("config").
_CHOSEN: dict[str, Path | None] = {"option": None, "config": None}


def choose_state_dir(option: Path | None = None) -> None:
    """Set by the CLI at the start of each command (None at its end): its --state-dir, if any."""
    _CHOSEN.update(option=option, config=None)


def use_config_state_dir(path: Path | None) -> None:
    """The loaded config's `state_dir` key, below --state-dir and $BAK_STATE_DIR."""
    _CHOSEN["config"] = path


def state_dir() -> Path:
    """Journal, locks and bak's own known_hosts: --state-dir, then $BAK_STATE_DIR, then the config's
    `state_dir` (a lab that keeps its journal beside its config), then the platform's user state folder."""
    env = os.environ.get("BAK_STATE_DIR")
    if _CHOSEN["option"]:
        path = _CHOSEN["option"]
    elif env:
        path = Path(env).expanduser()
    elif _CHOSEN["config"]:
        path = _CHOSEN["config"]
    else:
        import platformdirs

        path = Path(platformdirs.user_state_dir(APP, appauthor=False))
    ensure_private_dir(path)
    return path


def ensure_private_dir(path: Path) -> Path:
    """Create a folder (and missing parents) readable by its owner only. A folder that already
    exists keeps its mode: bak never changes the mode of a folder it did not create (a 1777 /tmp)."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by another process: not ours to chmod
        if os.name == "posix":
            os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    return path


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """A reader (node_exporter, a browser) sees the old file or the new one, never half of one: a temp file
    in the same folder (named so no `*.prom` glob matches it), fsynced, renamed over the file, the folder fsynced."""
    import tempfile

    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    if os.name == "posix":
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
