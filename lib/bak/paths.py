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


def state_dir() -> Path:
    """Journal, locks and bak's own known_hosts; $BAK_STATE_DIR overrides (tests, demo)."""
    env = os.environ.get("BAK_STATE_DIR")
    if env:
        path = Path(env).expanduser()
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
