"""`bak skill install`: the skill and its commands where Claude Code loads them under plain names.

A plugin's commands are always namespaced (`/backup-skill:bak-status`); personal and project
skills and commands keep the names the spec uses (`/bak-status`). Claude Code's docs
(https://code.claude.com/docs/en/skills, "Where skills live", and its note that custom commands
are merged into skills: `.claude/commands/deploy.md` and `.claude/skills/deploy/SKILL.md` both
create `/deploy`):

    personal  ~/.claude/skills/<name>/SKILL.md, ~/.claude/commands/<name>.md   /<name>, every project
    project   <dir>/.claude/skills/<name>/SKILL.md, <dir>/.claude/commands/<name>.md   /<name>, there
    plugin    <plugin>/skills/..., <plugin>/commands/<name>.md   /<plugin>:<name>

So the skill folder (SKILL.md with scripts/, lib/, references/ beside it) goes to
`<root>/skills/backup-skill/` and each prompt to `<root>/commands/bak-<command>.md`, with
`${CLAUDE_PLUGIN_ROOT}` (set for plugins only) written out as the skill folder's path. A record
of what was written (`.bak-install.json`, with each file's sha256) lets a second install change
only what changed and an uninstall remove only bak's files; a file bak did not write, or that
was edited since, is never overwritten or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from bak import __version__
from bak.errors import BadInput, Refused
from bak.report import Outcome

SKILL = "backup-skill"
RECORD = ".bak-install.json"
SOURCE = Path(__file__).resolve().parents[2]  # the plugin folder: lib/bak/skill.py -> lib -> root
COPIED = ("SKILL.md", "scripts", "lib/bak", "references", "commands")
PLUGIN_ROOT = re.compile(r"\$\{CLAUDE_PLUGIN_ROOT\}(/[^\s:)`\"']*)?")


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


def _rooted(text: str, skill_dir: Path) -> str:
    """${CLAUDE_PLUGIN_ROOT}/x written out as the installed folder's path, quoted if it needs it."""
    root = skill_dir.as_posix()

    def replace(match: re.Match) -> str:
        path = root + (match.group(1) or "")
        return f'"{path}"' if re.search(r"[\s\"'$`\\]", path) else path

    return PLUGIN_ROOT.sub(replace, text)


def planned_files(root: Path) -> dict[str, bytes]:
    """What an install writes, by path under the .claude folder."""
    skill_dir = root / "skills" / SKILL
    planned = {}
    for name, file in _source_files().items():
        data = file.read_bytes()
        if name.endswith(".md"):
            data = _rooted(data.decode("utf-8"), skill_dir).encode("utf-8")
        planned[f"skills/{SKILL}/{name}"] = data
        if name.startswith("commands/bak-"):
            planned[name] = planned[f"skills/{SKILL}/{name}"]  # the prompt Claude Code loads as /bak-<command>
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


def install(project: Path | None = None) -> Outcome:
    scope, root = claude_root(project)
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
    removed, kept = _remove(root, {n: s for n, s in recorded.items() if n not in planned})
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
    skill_dir = root / "skills" / SKILL
    for folder in sorted((p for p in skill_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if skill_dir.is_dir() and not any(skill_dir.iterdir()):
        skill_dir.rmdir()
    return _outcome(scope, root, "uninstall", written=0, unchanged=0, removed=removed, kept=kept)


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
