"""Where bak keeps its config and state on each platform (XDG, AppData, Library)."""

from __future__ import annotations

import os
import stat
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
    from bak.errors import BadInput

    where = "--state-dir" if _CHOSEN["option"] else "BAK_STATE_DIR" if env else "state_dir"
    try:
        ensure_private_dir(path)
    except OSError as exc:  # a file where a folder above it should be, no right to create it
        raise BadInput(f"cannot use {path} as bak's state folder: {exc.strerror or exc}", where=where) from None
    if not path.is_dir():
        raise BadInput(f"{path} is not a folder: bak keeps its journal and locks in a folder of its own", where=where)
    if path.resolve() == Path(path.resolve().anchor):
        raise BadInput(f"{path} is the filesystem root: bak keeps its journal and locks in a folder of its own",
                       where=where)
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


def output_file(path: Path, where: str, *, force: bool, parents: bool = False) -> bool:
    """Check a file bak is about to write as a whole (a report, a runbook, a config), before any work: absent,
    or a regular file it may replace (only with `force`). A device, pipe, socket, folder or symbolic link is
    refused: replacing /dev/full with a report breaks the machine. `parents`: missing folders above it will be
    made (the nearest existing one must be a folder). Returns whether the file exists."""
    from bak.errors import BadInput, Refused

    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        folder = path.parent
        while parents and not os.path.lexists(folder) and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise BadInput(f"the folder of {path} does not exist" if not os.path.lexists(folder) else
                           f"{folder} is not a folder, so {path} cannot be written", where=where,
                           hint="Create the folder first, or give a path in an existing one.") from None
        return False
    except OSError as exc:
        raise BadInput(f"cannot use {path}: {exc.strerror or exc}", where=where) from None
    kind = _kind(info.st_mode)
    if kind is not None:
        raise BadInput(f"{path} is {kind}, not a regular file: bak writes only regular files", where=where,
                       hint="Give the path of a new file (or of a regular file, with --force).")
    if not force:
        raise Refused(f"{path} already exists; bak never overwrites a file without --force", where=where,
                      code="would_overwrite", hint="Pick a new file name, or pass --force to replace it.")
    return True


def output_folder(path: Path, where: str) -> Path:
    """A folder bak writes files into (node_exporter's textfile folder): it must be a real, writable folder."""
    from bak.errors import BadInput

    try:
        info = path.stat()
    except FileNotFoundError:
        raise BadInput(f"the folder {path} does not exist", where=where) from None
    except OSError as exc:
        raise BadInput(f"cannot use {path}: {exc.strerror or exc}", where=where) from None
    if not stat.S_ISDIR(info.st_mode):
        raise BadInput(f"{path} is {_kind(info.st_mode) or 'a file'}, not a folder", where=where)
    if path.resolve() == Path(path.resolve().anchor):
        raise BadInput(f"{path} is the filesystem root: bak writes no file there", where=where)
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadInput(f"the folder {path} is not writable by this user", where=where)
    return path


def regular_or_absent(path: Path, where: str) -> bool:
    """A file bak reads or edits in place (known_hosts, an SSH key): absent (False) or a regular file, links
    followed (True); a device or pipe there is bad input, never read forever or blocked on."""
    from bak.errors import BadInput

    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise BadInput(f"cannot use {path}: {exc.strerror or exc}", where=where) from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{path} is {_kind(info.st_mode)}, not a regular file", where=where)
    return True


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a device"),
                        (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return None if stat.S_ISREG(mode) else "not a regular file"


def write_output(path: Path, data: bytes, where: str, mode: int = 0o644) -> None:
    """write_atomically, its failure (a read-only or pseudo filesystem, a full disk) as bak's error."""
    from bak.errors import WriteFailed

    try:
        write_atomically(path, data, mode)
    except OSError as exc:
        raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}", where=where) from None
