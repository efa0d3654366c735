"""`bak skill install`: the skill and its commands where Claude Code loads them under plain names.

A plugin's commands are always namespaced (`/backup-skill:bak-status`); personal and project
skills keep the names the spec uses (`/bak-status`). Claude Code's docs
(https://code.claude.com/docs/en/skills, "Where skills live"; custom commands are merged into skills:
`.claude/commands/deploy.md` and `.claude/skills/deploy/SKILL.md` both create `/deploy`):

    personal  ~/.claude/skills/<name>/SKILL.md      /<name>, every project
    project   <dir>/.claude/skills/<name>/SKILL.md  /<name>, there
    plugin    <plugin>/skills/..., <plugin>/commands/<name>.md   /<plugin>:<name>

So the skill folder (SKILL.md with scripts/, lib/, references/ beside it) goes to
`<root>/skills/backup-skill/` and each prompt becomes a skill of its own, `<root>/skills/bak-<command>/`.
Paths in them are relative to their own folder: `${CLAUDE_PLUGIN_ROOT}` (set for plugins only) is
written as `${CLAUDE_SKILL_DIR}` (the skill) or `${CLAUDE_SKILL_DIR}/../backup-skill` (a command), which
Claude Code 2.1 substitutes in a skill's allowed-tools and text (the function that builds a prompt
command from a SKILL.md; checked with the real CLI by tests/test_claude_code.py). A command file in
.claude/commands/ gets no `${CLAUDE_SKILL_DIR}`, and `${CLAUDE_PROJECT_DIR}` is the folder Claude Code was
started in (a subfolder breaks it), so neither would survive the project moving. A record of what was
written (`.bak-install.json`, with each file's sha256) lets a second install change only what changed
and an uninstall remove only bak's files; a file bak did not write, or that was edited since, is never
overwritten or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bak import __version__
from bak.errors import BadInput, Refused
from bak.front import PLUGIN as SKILL
from bak.report import Outcome

RECORD = ".bak-install.json"
SOURCE = Path(__file__).resolve().parents[2]  # the plugin folder: lib/bak/skill.py -> lib -> root
COPIED = ("SKILL.md", "scripts", "lib/bak", "references")
PLUGIN_ROOT = "${CLAUDE_PLUGIN_ROOT}"
ROOT_OF = {"skill": "${CLAUDE_SKILL_DIR}", "command": "${CLAUDE_SKILL_DIR}/../" + SKILL}


def claude_root(project: Path | None) -> tuple[str, Path]:
    if project is None:
        return "user", Path.home() / ".claude"
    if not project.is_dir():
        raise BadInput(f"no such project folder: {project}", where="--project")
    if project.resolve() == Path(project.resolve().anchor):
        raise BadInput(f"{project} is the filesystem root, not a project folder", where="--project",
                       hint="Give the project's own folder (the one Claude Code is started in).")
    return "project", project.resolve() / ".claude"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source_files() -> dict[str, Path]:
    """Every file of the skill folder, by its path inside it (no caches)."""
    if not (SOURCE / "SKILL.md").is_file() or not (SOURCE / "commands").is_dir():
        raise BadInput(f"{SOURCE} is not bak's plugin folder (no SKILL.md and commands/ there)",
                       hint="Run the install from a clone of bak, e.g. python3 scripts/bak_skill.py install.")
    files = {}
    for part in COPIED:
        path = SOURCE / part
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in candidates:
            if "__pycache__" not in file.parts and file.suffix != ".pyc":
                files[file.relative_to(SOURCE).as_posix()] = file
    return files


def planned_files(root: Path) -> dict[str, bytes]:
    """What an install writes, by path under the .claude folder."""
    planned = {}
    for name, file in _source_files().items():
        data = file.read_bytes()
        if name == "SKILL.md":
            data = data.replace(PLUGIN_ROOT.encode(), ROOT_OF["skill"].encode())
        planned[f"skills/{SKILL}/{name}"] = data
    for prompt in sorted((SOURCE / "commands").glob("bak-*.md")):
        data = prompt.read_bytes().replace(PLUGIN_ROOT.encode(), ROOT_OF["command"].encode())
        planned[f"skills/{prompt.stem}/SKILL.md"] = data  # Claude Code loads it as /bak-<command>
    return planned


def _read_record(root: Path) -> dict[str, str]:
    try:
        return json.loads((root / "skills" / SKILL / RECORD).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _current(path: Path) -> str | None:
    """The sha256 of a regular file, '' for anything else that is there, None when nothing is."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return ""
    return _sha(path.read_bytes()) if path.exists() else None


def _write(path: Path, data: bytes, executable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        handle.write(data)
    os.chmod(partial, 0o755 if executable else 0o644)
    os.replace(partial, path)


def plugin_in_use(project: Path | None) -> str | None:
    """Where Claude Code has bak's plugin enabled (its settings' enabledPlugins), seen from this scope."""
    home = Path.home() / ".claude"
    settings = [home / "settings.json"]
    if project is not None:
        settings += [project / ".claude" / "settings.json", project / ".claude" / "settings.local.json"]
    for path in settings:
        try:
            enabled = json.loads(path.read_text(encoding="utf-8")).get("enabledPlugins") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key, on in enabled.items() if isinstance(enabled, dict) else ():
            if on is True and key.split("@")[0] == SKILL:
                return f"{key} (enabled in {path})"
    return None


def install(project: Path | None = None) -> Outcome:
    scope, root = claude_root(project)
    plugin = plugin_in_use(project)
    if plugin:
        raise Refused(f"bak's plugin {plugin} is on: the plain names too would load every command twice "
                      f"(/bak-status and /{SKILL}:bak-status) and the skill twice", where=str(root),
                      code="plugin_installed",
                      hint=f"Pick one. Keep the plugin (its commands are /{SKILL}:bak-status ...) and skip this "
                           f"install; or run `claude plugin uninstall {plugin.split()[0]}`, then this install again.")
    planned = planned_files(root)
    recorded = _read_record(root)
    foreign, unchanged, written = [], 0, []
    for name, data in planned.items():
        current = _current(root / name)
        if current == _sha(data):
            unchanged += 1
        elif current is None or (current and recorded.get(name) == current):
            written.append(name)
        else:
            foreign.append(str(root / name))
    if foreign:
        raise Refused(f"{len(foreign)} file(s) where the install would write are not bak's, or were edited since "
                      f"bak wrote them: {', '.join(foreign[:5])}", where=str(root), code="would_overwrite",
                      hint="Move them away (or merge your edits elsewhere), then run the install again. Nothing was written.")
    for name in written:
        _write(root / name, planned[name], executable=name.endswith(".py"))
    gone = {n: s for n, s in recorded.items() if n not in planned}  # an older layout's files among them
    removed, kept = _remove(root, gone)
    _remove_empty_folders(root, gone)
    _write(root / "skills" / SKILL / RECORD,
           json.dumps({"version": __version__, "files": {n: _sha(d) for n, d in planned.items()}}, indent=1).encode(),
           executable=False)
    return _outcome(scope, root, "install", written=len(written), unchanged=unchanged, removed=removed, kept=kept)


def uninstall(project: Path | None = None) -> Outcome:
    scope, root = claude_root(project)
    recorded = _read_record(root)
    removed, kept = _remove(root, recorded)
    record = root / "skills" / SKILL / RECORD
    record.unlink(missing_ok=True)
    _remove_empty_folders(root, recorded)
    return _outcome(scope, root, "uninstall", written=0, unchanged=0, removed=removed, kept=kept)


def _remove_empty_folders(root: Path, files: dict[str, str]) -> None:
    """The folders bak's files were in, once empty (deepest first); never root/skills itself."""
    folders = {parent for name in files for parent in (root / name).parents
               if root / "skills" in parent.parents or root / "commands" in parent.parents}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


def _remove(root: Path, files: dict[str, str]) -> tuple[int, list[str]]:
    """Remove the recorded files that are still as bak wrote them; list the others, left alone."""
    removed, kept = 0, []
    for name, digest in files.items():
        current = _current(root / name)
        if current is None:
            continue
        if current == digest:
            (root / name).unlink()
            removed += 1
        else:
            kept.append(str(root / name))
    return removed, kept


def _outcome(scope: str, root: Path, action: str, *, written: int, unchanged: int, removed: int,
             kept: list[str]) -> Outcome:
    names = [f"/{p.stem}" for p in sorted((SOURCE / "commands").glob("bak-*.md"))]
    outcome = Outcome({"action": action, "scope": scope, "root": str(root), "skill_dir": str(root / "skills" / SKILL),
                       "skill": f"/{SKILL}", "commands": names, "written": written, "unchanged": unchanged,
                       "removed": removed, "kept": kept})
    for path in kept:
        outcome.warnings.append(f"left {path} in place: it was edited after bak wrote it")
    return outcome
