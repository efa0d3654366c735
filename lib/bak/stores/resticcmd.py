"""restic's command lines and output, as pure functions: argv built by value, output parsed defensively.

How bak lays out its backups in a repository (every snapshot tagged `bak`, host `bak`):

- a file artifact is streamed with `backup --stdin` to the path `/FOLDER/NAME`, tagged `upload=TOKEN`.
  It counts only once a *seal* names it: a snapshot `/FOLDER/NAME.sidecars.tar` tagged `seal` and, for
  each upload it seals, `upload=TOKEN`, `size:TOKEN=`, `sha256:TOKEN=` and one `sidecar:TOKEN=SUFFIX` per
  sidecar, holding those sidecars as a tar. A seal is saved only after the snapshots it seals, so a
  killed run leaves at most unsealed uploads: partials, removed by the next run. `bak create` seals each
  artifact alone; `bak sync` seals a batch at once (one restic run, one key derivation, fewer).
- a folder snapshot (rsync, config, vault) is one `backup` of the finished folder and its manifest,
  tagged `tree` and `path=FOLDER/NAME`: restic writes a snapshot only when it has read everything.
- `protected` marks a safety copy. Snapshots of bak 0.1 (an artifact tagged `sha256=` itself, each
  sidecar a snapshot of its own) are still read.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

TAG = "bak"
HOST = "bak"
SEAL = "seal"
TREE = "tree"
PROTECTED = "protected"
SEAL_SUFFIX = ".sidecars.tar"
BACKENDS = ("sftp", "rest", "s3")
VERBS = ("backup", "snapshots", "dump", "restore", "forget", "prune", "check", "tag", "init", "unlock", "cat")


# --- repositories ------------------------------------------------------------------------------
def backend_of(repository: str) -> str:
    """local, sftp, rest or s3."""
    prefix = repository.split(":", 1)[0]
    return prefix if prefix in BACKENDS and ":" in repository else "local"


def sftp_parts(repository: str) -> tuple[str | None, str]:
    """`sftp:user@host:/path` -> ("user@host", "/path"); `sftp:/path` -> (None, "/path")."""
    rest = repository[len("sftp:"):]
    match = re.match(r"([^@/:]+@(?:\[[^\]/]+\]|[^:/\[]+)):(.*)$", rest)
    return (match.group(1), match.group(2)) if match else (None, rest)


def sftp_location(user: str, address: str, repository: str) -> str:
    """What restic parses for the path (the connection itself goes through sftp.command)."""
    host = f"[{address}]" if ":" in address else address
    return f"sftp:{user}@{host}:{sftp_parts(repository)[1]}"


def server_of(repository: str) -> str | None:
    """The machine holding a remote repository's bytes (lower case), None for a local path."""
    backend = backend_of(repository)
    if backend in ("rest", "s3"):
        return (urlsplit(repository.split(":", 1)[1]).hostname or "").lower() or None
    if backend == "sftp":
        login = sftp_parts(repository)[0]
        return login.rsplit("@", 1)[1].strip("[]").lower() if login else None
    return None


def sftp_command(ssh: str, user: str, address: str) -> str:
    """restic's sftp.command: bak's ssh (its key, its known_hosts only) and the sftp subsystem."""
    return shlex.join([*shlex.split(ssh), f"{user}@{address}", "-s", "sftp"])


# --- argv (pure) -------------------------------------------------------------------------------
def global_options(*, sftp_command: str | None = None, limit_upload_kib: int | None = None) -> list[str]:
    argv = []
    if sftp_command:
        argv += ["-o", f"sftp.command={sftp_command}"]
    if limit_upload_kib:
        argv += ["--limit-upload", str(limit_upload_kib)]
    return argv


def _tags(tags: list[str]) -> list[str]:
    return [word for tag in [TAG, *tags] for word in ("--tag", tag)]


def backup_stdin_argv(path: str, tags: list[str], options: list[str] = ()) -> list[str]:
    return ["restic", *options, "backup", "--stdin", "--stdin-filename", path, "--host", HOST, "--json", *_tags(tags)]


def backup_tree_argv(paths: list[str], tags: list[str], options: list[str] = ()) -> list[str]:
    return ["restic", *options, "backup", "--host", HOST, "--json", *_tags(tags), "--", *paths]


def snapshots_argv(options: list[str] = ()) -> list[str]:
    return ["restic", *options, "snapshots", "--json", "--tag", TAG]


def dump_argv(snapshot: str, path: str, options: list[str] = ()) -> list[str]:
    return ["restic", *options, "dump", snapshot, path]


def restore_argv(snapshot: str, target: str, include: str, options: list[str] = ()) -> list[str]:
    return ["restic", *options, "restore", snapshot, "--target", target, "--include", include]


def forget_argv(ids: list[str], options: list[str] = ()) -> list[str]:
    return ["restic", *options, "forget", *ids]


def prune_argv(options: list[str] = ()) -> list[str]:
    return ["restic", *options, "prune"]


def check_argv(part: tuple[int, int] | None, options: list[str] = ()) -> list[str]:
    argv = ["restic", *options, "check"]
    return argv + [f"--read-data-subset={part[0]}/{part[1]}"] if part else argv


def tag_argv(snapshot: str, add: list[str], options: list[str] = ()) -> list[str]:
    return ["restic", *options, "tag", *(w for tag in add for w in ("--add", tag)), snapshot]


def simple_argv(command: str, options: list[str] = ()) -> list[str]:
    """`init`, `unlock`, `cat config`: no arguments of their own."""
    return ["restic", *options, *command.split()]


# --- what restic answers (parsers) -------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One of bak's snapshots, as `restic snapshots --json` lists it."""

    id: str
    time: float          # seconds since the epoch
    paths: tuple[str, ...]
    tags: tuple[str, ...]

    def tag(self, key: str) -> str | None:
        prefix = key + "="
        return next((t[len(prefix):] for t in self.tags if t.startswith(prefix)), None)

    def values(self, key: str) -> list[str]:
        prefix = key + "="
        return [t[len(prefix):] for t in self.tags if t.startswith(prefix)]


def parse_time(text: str) -> float | None:
    """restic's RFC 3339 time with nanoseconds (`2026-12-01T15:51:51.463906358+01:00`)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        return None
    try:
        zone = timezone.utc if match.group(3) == "Z" else datetime.strptime(match.group(3).replace(":", ""), "%z").tzinfo
        when = datetime.fromisoformat(match.group(1)).replace(tzinfo=zone)
    except ValueError:
        return None
    return when.timestamp() + float("0" + (match.group(2) or ".0"))


def parse_snapshots(text: str) -> list[Snapshot]:
    """bak's snapshots in `restic snapshots --json`; anything malformed is left out, never raised."""
    try:
        rows = json.loads(text or "[]")
    except ValueError:
        return []
    found = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        ident, paths, tags = row.get("id"), row.get("paths"), row.get("tags") or []
        when = parse_time(row["time"]) if isinstance(row.get("time"), str) else None
        if not (isinstance(ident, str) and re.fullmatch(r"[0-9a-f]{8,64}", ident) and when is not None
                and isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)
                and isinstance(tags, list) and all(isinstance(t, str) for t in tags) and TAG in tags):
            continue
        found.append(Snapshot(ident, when, tuple(paths), tuple(tags)))
    return found


def parse_backup(stdout: str) -> dict | None:
    """The summary line of `restic backup --json` (snapshot_id, total_bytes_processed, ...), or None."""
    summary = None
    for line in stdout.splitlines():
        if '"summary"' not in line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("message_type") == "summary" and isinstance(row.get("snapshot_id"), str):
            summary = row
    return summary


_GROUP = re.compile(r"read group #(\d+) of (\d+) data packs \(out of total (\d+) packs in (\d+) groups\)")


def parse_check(text: str) -> dict:
    """What `restic check --read-data-subset=n/t` says it read: the group, packs read, packs in all."""
    match = _GROUP.search(text)
    result = {"errors": "no errors were found" not in text}
    if match:
        group, packs, total, groups = (int(g) for g in match.groups())
        result.update(group=group, groups=groups, packs_read=packs, packs_total=total)
    return result


_LOCKED = re.compile(r"repository is already locked (exclusively )?by PID (\d+) on (\S+) by ([^\s(]+)")


def failure_kind(stderr: str) -> str | None:
    """Which of restic's failures bak answers in its own way: wrong_password, host_key, locked, exists,
    unreachable, no_repository (None: any other)."""
    if "wrong password or no key found" in stderr:
        return "wrong_password"
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return "host_key"
    if "is already locked" in stderr:
        return "locked"
    if "config file already exists" in stderr or "repository master key and config already initialized" in stderr:
        return "exists"
    if UNREACHABLE.search(stderr):  # restic asks "Is there a repository...?" after any failure to read the config
        return "unreachable"
    if "Is there a repository at the following location?" in stderr or "unable to open config file" in stderr:
        return "no_repository"
    return None


UNREACHABLE = re.compile(r"dial tcp|connection refused|no such host|i/o timeout|network is unreachable|"
                         r"connection reset|TLS handshake|context deadline exceeded")


def lock_holder(stderr: str) -> dict | None:
    match = _LOCKED.search(stderr)
    if not match:
        return None
    return {"pid": int(match.group(2)), "host": match.group(3), "user": match.group(4), "exclusive": bool(match.group(1))}


RETRYING = re.compile(r"returned error, retrying after")


def parse_subset(text: str) -> int:
    """`1/30` -> 30: each check reads the next thirtieth."""
    match = re.fullmatch(r"1/([1-9][0-9]{0,3})", text)
    if not match:
        raise ValueError(f"{text!r} is not 1/N")
    return int(match.group(1))


def next_part(previous: tuple[int, int] | None, groups: int) -> tuple[int, int]:
    """The part of the data the next check reads: after the last one read, in a cycle of `groups`."""
    if previous is None or previous[1] != groups or not 1 <= previous[0] <= groups:
        return (1, groups)
    return (previous[0] % groups + 1, groups)


def coverage(checks: list[tuple[str, int, int]]) -> str | None:
    """When every part of the data was last read: `checks` are (time, part, groups), newest first, of the
    checks that passed. The answer is the time of the oldest check in the newest run that read every part."""
    seen: set[int] = set()
    groups = None
    for when, part, total in checks:
        if groups is None:
            groups = total
        if total != groups:
            return None
        seen.add(part)
        if len(seen) == groups:
            return when
    return None


# --- bak's layout in a repository --------------------------------------------------------------
@dataclass
class Artifact:
    """A backup as bak sees it in a repository: its snapshots and what they say."""

    folder: str
    name: str
    time: float
    ids: list[str]                # its own snapshots: what forgetting it removes (its seal too, if it seals it alone)
    complete: bool
    tree: bool = False
    size: int = 0
    sha256: str | None = None
    sidecars: list[str] = field(default_factory=list)
    protected: bool = False
    paths: tuple[str, ...] = ()   # a tree's paths as restic recorded them (the folder, its manifest)
    stream: str | None = None     # the artifact's own snapshot
    token: str | None = None      # its upload token
    seal: str | None = None       # the seal's snapshot id (its tar holds the sidecars) ...
    seal_path: str | None = None  # ... and path
    sealed_with: frozenset = frozenset()  # the upload tokens, still in the repository, that the seal seals


def _split(path: str) -> tuple[str, str]:
    folder, _, name = path.strip("/").rpartition("/")
    return folder, name


def seal_tags(uploads: list[tuple[str, int, str, list[str]]]) -> list[str]:
    """A seal's tags: for each upload (token, size, sha256, sidecar suffixes) what makes it count."""
    tags = [SEAL]
    for token, size, sha256, suffixes in uploads:
        tags += [f"upload={token}", f"size:{token}={size}", f"sha256:{token}={sha256}",
                 *(f"sidecar:{token}={suffix}" for suffix in suffixes)]
    return tags


def layout(snapshots: list[Snapshot]) -> tuple[list[Artifact], list[Artifact]]:
    """(complete backups, leftovers of interrupted runs), each with the snapshot ids it is made of.

    A seal may seal several uploads (bak sync seals a batch at once); it is one of an artifact's ids
    only when no other upload it seals is still in the repository."""
    streams: dict[str, Snapshot] = {}
    seals: list[Snapshot] = []
    complete: list[Artifact] = []
    leftovers: list[Artifact] = []
    for snap in snapshots:
        if TREE in snap.tags:
            path = snap.tag("path")
            if path and "/" in path:
                folder, name = _split(path)
                complete.append(Artifact(folder, name, snap.time, [snap.id], True, tree=True, paths=snap.paths,
                                         protected=PROTECTED in snap.tags, size=_int(snap.tag("size"))))
        elif SEAL in snap.tags:
            seals.append(snap)
        elif snap.tag("upload"):
            streams.setdefault(snap.tag("upload"), snap)
        else:  # bak 0.1: the artifact tagged itself; each sidecar was a snapshot of its own
            folder, name = _split(snap.paths[0])
            done = snap.tag("sha256") is not None
            artifact = Artifact(folder, name, snap.time, [snap.id], done, size=_int(snap.tag("size")),
                                sha256=snap.tag("sha256"), protected=PROTECTED in snap.tags, stream=snap.id)
            (complete if done else leftovers).append(artifact)
    sealed: dict[str, Snapshot] = {}
    for seal in seals:
        members = frozenset(t for t in seal.values("upload") if t in streams)
        for token in members:
            if seal.tag(f"sha256:{token}") and token not in sealed:
                sealed[token] = seal
        if not members:  # its uploads are gone: a leftover, named after the first one it sealed
            folder, name = _split(seal.paths[0].removesuffix(SEAL_SUFFIX))
            leftovers.append(Artifact(folder, name, seal.time, [seal.id], False))
    for token, stream in streams.items():
        folder, name = _split(stream.paths[0])
        seal = sealed.get(token)
        if seal is None:
            leftovers.append(Artifact(folder, name, stream.time, [stream.id], False, stream=stream.id, token=token))
            continue
        members = frozenset(t for t in seal.values("upload") if t in streams)
        sidecars = seal.values(f"sidecar:{token}")
        complete.append(Artifact(folder, name, stream.time, [stream.id] + ([seal.id] if members == {token} else []), True,
                                 size=_int(seal.tag(f"size:{token}")), sha256=seal.tag(f"sha256:{token}"),
                                 sidecars=sidecars, protected=PROTECTED in stream.tags or ".protected" in sidecars,
                                 stream=stream.id, token=token, seal=seal.id, seal_path=seal.paths[0],
                                 sealed_with=members))
    return complete, leftovers


def forget_ids(artifacts: list[Artifact]) -> list[str]:
    """Every snapshot id that forgetting these artifacts together removes: their own, and each seal whose
    uploads are all among them."""
    ids = {i for a in artifacts for i in a.ids}
    tokens = {a.token for a in artifacts if a.token}
    ids |= {a.seal for a in artifacts if a.seal and a.sealed_with <= tokens}
    return sorted(ids)


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


def tree_root(artifact: Artifact) -> str | None:
    """The snapshot folder's own path in a tree snapshot (the other path is its manifest)."""
    folders = [p for p in artifact.paths if not p.endswith(".manifest")]
    return folders[0] if len(folders) == 1 else None


def manifest_path(artifact: Artifact) -> str | None:
    manifests = [p for p in artifact.paths if p.endswith(".manifest")]
    return manifests[0] if len(manifests) == 1 else None


def restored_root(scratch: str, root: str) -> str:
    """Where `restic restore --target scratch` puts a snapshot's folder: its whole path under scratch."""
    return posixpath.join(scratch, root.lstrip("/"))
