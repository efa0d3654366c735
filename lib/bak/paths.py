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
    """Create a folder (and parents) readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name == "posix":
        os.chmod(path, 0o700)
    return path
