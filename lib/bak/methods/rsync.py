"""File trees as dated rsync snapshots, hard-linked to the previous one (--link-dest).

Names: `rsync-{target}-{YYYY-MM-DD}` (the seed's daily name) for the first snapshot of a day, whose
real time is recorded as its manifest's mtime (see catalog); later ones the same day are
`rsync-{target}-{YYYY-MM-DD_HHMMSS}`. A snapshot is written into `NAME.partial/`, its manifest
written, then renamed: a killed run's partial is resumed by the next run (rsync --partial).
Each snapshot's `NAME.manifest` (see bak.manifest) comes from rsync's own listing of the copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shlex
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bak import manifest, naming
from bak.catalog import Backup, Listing, folder_of, safety_folder_of, scan
from bak.config import LOCAL, Host, Target
from bak.errors import BadInput, BakError, CommandFailed, Refused, TransportError, VerifyFailed
from bak.journal import Operation
from bak.methods.base import Context, Method, clear_leftovers, drill_verdict, free_name, fresh_name
from bak.report import human_size
from bak.run.base import Cancel, Runner
from bak.stores import Store
from bak.streams import lines
from bak.verify import passed

TRANSPORT_FAILURES = {10, 12, 30, 35, 255}
RETRIES = 3
BACKOFF_S = 2.0
MANIFEST = naming.MANIFEST_SUFFIX
# rsync prints times in its local zone: the same zone everywhere makes listings of two hosts comparable.
RSYNC_ENV = {"TZ": "UTC"}
STATS = {"Number of files": "files", "Number of regular files transferred": "files_transferred",
         "Total file size": "total_size", "Total transferred file size": "transferred_size",
         "Literal data": "literal_data", "Matched data": "matched_data", "Total bytes sent": "bytes_sent",
         "Total bytes received": "bytes_received"}


# --- argv builders (pure) ------------------------------------------------------------------
def ssh_transport(host: Host, known_hosts: Path) -> str:
    """rsync's -e: our key, our known_hosts only (no global ones), never a prompt or an auto-accepted key."""
    argv = ["ssh", "-p", str(host.port), "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(host.connect_timeout)}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]
    if host.key_file:
        argv += ["-i", str(Path(host.key_file).expanduser()), "-o", "IdentitiesOnly=yes"]
    return shlex.join(argv)


def remote_spec(host: Host, path: str) -> str:
    address = f"[{host.address}]" if ":" in host.address else host.address
    return f"{host.user}@{address}:{path}"


def rsync_argv(source: str, dest: str, *, link_dest: str | None = None, excludes: list[str] | tuple = (),
               bwlimit: int = 0, checksum: bool = False, ssh: str | None = None, delete: bool = False,
               algorithm: str = "md5", dry_run: bool = False, relative: bool = False, files_from: bool = False,
               ignore_missing: bool = False) -> list[str]:
    # -ii lists every entry, unchanged ones too, with its metadata: the manifest needs no second walk.
    # -8 leaves non-ASCII names as they are in any locale; control characters come escaped as \#ooo.
    argv = ["rsync", "-a", "-8", "--partial", "--numeric-ids", "--stats", "--no-human-readable", "-ii",
            f"--out-format={manifest.OUT_FORMAT}", f"--checksum-choice={algorithm}"]
    if ssh:
        argv += ["-e", ssh, "--secluded-args"]
    if dry_run:
        argv.append("--dry-run")
    if relative:
        argv.append("--relative")
    if files_from:
        argv += ["--files-from=-", "--from0", "--recursive"]  # -a does not recurse with --files-from
    if ignore_missing:
        argv.append("--ignore-missing-args")  # a listed name gone since: absent, as if removed before the copy
    if checksum:
        argv.append("--checksum")
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    if delete:
        argv.append("--delete")
    argv += [f"--exclude={pattern}" for pattern in excludes]
    if link_dest:
        argv.append(f"--link-dest={link_dest}")
    return argv + ["--", source, dest]  # a path that starts with '-' is a path, never an option


# --- output parsing (pure) -----------------------------------------------------------------
def parse_stats(stdout: str) -> dict:
    stats = {}
    for line in stdout.splitlines():
        label, _, value = line.partition(":")
        if label in STATS:
            number = re.match(r"\s*([\d,]+)", value)
            if number:
                stats[STATS[label]] = int(number.group(1).replace(",", ""))
    return stats


def failed_files(stderr: str) -> list[str]:
    return re.findall(r'rsync: \[[a-z]+\] [^"]*"([^"]+)"', stderr)


def vanished_files(stderr: str) -> list[str]:
    return re.findall(r'file has vanished: "([^"]+)"', stderr)


def checksum_list(version_text: str) -> list[str]:
    """The whole-file checksums an rsync offers (`rsync --version`'s "Checksum list:" line)."""
    lines = version_text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("Checksum list"):
            return [w for w in (lines[index + 1] if index + 1 < len(lines) else "").split() if not w.startswith("(")]
    return ["md5"]  # rsync 3.1 and older print no list and only know md4/md5


# --- the transport ---------------------------------------------------------------------------
def transfer(ctx: Context, src_host: str, src: str, dst_host: str, dst: str) -> tuple[Runner, str, str, str | None, str]:
    """Where rsync runs and how it names both ends: (runner, source, dest, ssh -e or None, the far host)."""
    from bak.run.hosts import known_hosts_path

    if src_host == dst_host:
        return ctx.hosts.runner(src_host), src, dst, None, src_host
    if src_host == LOCAL:
        host = ctx.config.host(dst_host)
        return ctx.hosts.runner(LOCAL), src, remote_spec(host, dst), ssh_transport(host, known_hosts_path(host)), dst_host
    if dst_host == LOCAL:
        host = ctx.config.host(src_host)
        return ctx.hosts.runner(LOCAL), remote_spec(host, src), dst, ssh_transport(host, known_hosts_path(host)), src_host
    raise BadInput(f"rsync between two remote hosts ({src_host} -> {dst_host}) is not supported",
                   where="destinations", hint="Put the destination on the source's host or on this machine.")


def _offered(runner: Runner) -> set[str]:
    """Asked once per host and command."""
    if not hasattr(runner, "rsync_checksums"):
        runner.rsync_checksums = set(checksum_list(runner.run(["rsync", "--version"]).stdout_text))
    return runner.rsync_checksums


def algorithm_for(ctx: Context, *hosts: str) -> str:
    """xxh128 when every rsync involved has it (3.2+ with xxhash), else md5 (every rsync since 3.0)."""
    return "xxh128" if all("xxh128" in _offered(ctx.hosts.runner(h)) for h in dict.fromkeys(hosts)) else "md5"


def run_rsync(runner: Runner, argv: list[str], timeout: float, progress, width: int, new_attempt=None, *,
              stdin: bytes | None = None, cancel: Cancel | None = None):
    """rsync with bounded retries on transport failures, its listing parsed while it runs.

    `new_attempt()` gives each attempt a fresh handler for its entries (they are then not kept).
    `cancel` (local runs only) stops it. Returns (exit code, ListingReader, stderr). A refused host key
    is never retried."""
    stops = {"cancel": cancel} if cancel is not None else {}
    for attempt in range(1, RETRIES + 1):
        reader = manifest.ListingReader(width, new_attempt() if new_attempt else None)
        try:
            out = runner.run(argv, check=False, timeout=timeout, stdout=reader.feed, env=RSYNC_ENV, stdin=stdin, **stops)
        except TransportError:
            reader.close()
            if attempt == RETRIES:
                raise
            code, stderr = 255, "connection dropped"
        except BaseException:
            reader.close()
            raise
        else:
            reader.close()
            code, stderr = out.returncode, out.stderr_text
            if code not in TRANSPORT_FAILURES or attempt == RETRIES or host_key_problem(stderr):
                return code, reader, stderr
        progress(f"rsync transport failure (exit {code}), retry {attempt} of {RETRIES - 1} in {BACKOFF_S * attempt:.0f}s")
        time.sleep(BACKOFF_S * attempt)
    return code, reader, stderr


def host_key_problem(stderr: str) -> bool:
    return "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr


def raise_for_exit(code: int, stderr: str, where: str, ctx: Context, what: str) -> None:
    """rsync's exit codes as bak's errors: 24 (vanished files) is a warning, the rest fail."""
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if code in (0, 24):
        if code == 24:
            ctx.warnings.append(f"{what}: files vanished during the copy (normal for a live tree): "
                                + ", ".join(vanished_files(stderr)[:10]))
        return
    if host_key_problem(stderr):
        from bak.errors import HostKeyUnknown

        raise HostKeyUnknown(f"rsync's ssh refused the host key of {where}: {last}", where=where,
                             hint="Check the host's key, then record it with: bak ssh trust HOST --fingerprint SHA256:...")
    if code == 23:
        raise CommandFailed(f"rsync could not copy some files: {', '.join(failed_files(stderr)[:20]) or stderr[-300:]}",
                            returncode=23, stderr_tail=stderr[-2000:], where=where, code="rsync_partial",
                            hint="Check permissions on the listed files; the snapshot was not finalised.")
    if code in TRANSPORT_FAILURES:
        raise TransportError(f"rsync transport to {where} failed after {RETRIES} attempts (exit {code}): {last}",
                             where=where, hint="The partial snapshot is kept; the next run resumes it.")
    nospace = "No space left" in stderr
    raise CommandFailed(f"rsync exited {code}: {last}", returncode=code, stderr_tail=stderr[-2000:], where=where,
                        code="disk_full" if nospace else "rsync_failed",
                        hint="Free space on the destination, then run again." if nospace else None)


def source_path(target: Target) -> str:
    path = target.options.get("source") or target.options["path"]
    if target.host == LOCAL:
        return str(Path(path).expanduser())
    return path[2:] if path.startswith("~/") else path  # relative paths are relative to the remote home


# --- listing a tree where it lives ------------------------------------------------------------
def tree_items(runner: Runner, root: str, algorithm: str, *, checksums: bool = True,
               only: list[str] | None = None, excludes: list[str] | tuple = ()) -> list[manifest.Item]:
    """rsync's listing of a tree, run on the host that holds it (a dry run into a path it never creates):
    every entry's type, mode, owner, size, mtime, link target and, with `checksums`, each file's checksum.
    `only` limits it to those paths (--files-from); `excludes` leaves out what rsync's patterns match."""
    probe = root.rstrip("/") + ".bak-listing"
    argv = rsync_argv(root.rstrip("/") + "/", probe + "/", algorithm=algorithm, dry_run=True, checksum=checksums,
                      files_from=only is not None, excludes=excludes)
    reader = manifest.ListingReader(manifest.CHECKSUM_WIDTH[algorithm])
    listed = b"\0".join(os.fsencode(path) for path in only) + b"\0" if only else None
    try:
        out = runner.run(argv, check=False, stdout=reader.feed, env=RSYNC_ENV, stdin=listed if only is not None else None)
    finally:
        reader.close()
    if out.returncode not in (0, 24):
        raise CommandFailed(f"rsync could not read {root}: {out.stderr_text.strip()[-300:]}", returncode=out.returncode,
                            stderr_tail=out.stderr_text[-2000:], where=runner.host_name)
    for item in reader.items:
        if item.link_text:
            resolve_link(runner, root, item)
    return reader.items


PARALLEL_MIN_BYTES = 64 << 20  # below this, one rsync reads it faster than several start


def checksummed_tree(runner: Runner, root: str, algorithm: str) -> tuple[list[manifest.Item], dict[str, str | None]]:
    """Every entry of a tree, and every file's checksum read by as many rsyncs as the host has cores,
    each on files of about the same total size: reading, not hashing, is the limit (xxh128)."""
    items = tree_items(runner, root, algorithm, checksums=False)
    files = sorted((i for i in items if i.type == "f"), key=lambda i: i.size, reverse=True)
    workers = min(cores(runner), 8) if sum(i.size for i in files) >= PARALLEL_MIN_BYTES else 1
    groups: list[list[str]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for item in files:
        lightest = loads.index(min(loads))
        groups[lightest].append(item.path)
        loads[lightest] += item.size + 4096  # a file's own cost besides its bytes
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(lambda group: tree_items(runner, root, algorithm, only=group), [g for g in groups if g])
        digests = {i.path: i.checksum for part in parts for i in part if i.type == "f"}
    return items, digests


def cores(runner: Runner) -> int:
    """CPU cores of the runner's host (asked once per host and command)."""
    if not hasattr(runner, "cores"):
        if runner.host_name == LOCAL:
            runner.cores = os.cpu_count() or 1
        else:
            out = runner.run(["nproc"], check=False)
            runner.cores = int(out.stdout_text.strip()) if out.returncode == 0 and out.stdout_text.strip().isdigit() else 1
    return runner.cores


def resolve_link(runner: Runner, root: str, item: manifest.Item) -> None:
    """Which " -> " of a symlink line ends its name: the split whose name is a link pointing at the rest."""
    for name, target in manifest.link_splits(item.link_text):
        out = runner.run(["readlink", "--", posixpath.join(root, name)], check=False)
        if out.returncode == 0 and out.stdout.rstrip(b"\n").decode("utf-8", "surrogateescape") == target:
            item.path, item.target, item.link_text = name, target, None
            return
    raise CommandFailed(f"cannot tell the name of the symbolic link {item.link_text!r} under {root}",
                        where=runner.host_name, code="rsync_listing")


def sha256_of(runner: Runner, root: str, paths: list[str]) -> dict[str, str]:
    """sha256 of files, for manifests written by bak 0.1 (which recorded sha256)."""
    if not paths:
        return {}
    if runner.host_name == LOCAL:
        digests = {}
        for rel in paths:
            digest = hashlib.sha256()
            with open(os.path.join(root, rel), "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            digests[rel] = digest.hexdigest()
        return digests
    out = runner.run(["xargs", "-0", "sha256sum", "-z", "--"],
                     stdin=b"\0".join(os.fsencode(f"{root}/{p}") for p in paths) + b"\0").stdout
    digests = {}
    for record in out.split(b"\0"):
        if record:
            digest, _, path = record.partition(b"  ")
            digests[posixpath.relpath(path.decode("utf-8", "surrogateescape"), root)] = digest.decode()
    return digests


def read_manifest(store: Store, folder: str, name: str) -> manifest.Manifest | None:
    try:
        return manifest.loads(store.read_small(folder, name + MANIFEST, 1 << 34))
    except (OSError, ValueError, BakError):
        return None


PROGRESS_EVERY_S = 10.0
TALLY_BATCH = 1024  # entries a part counts before it tells the tally


class Tally:
    """Entries and bytes listed so far by every rsync of one snapshot, said every PROGRESS_EVERY_S seconds:
    the first snapshot of a large tree runs for hours."""

    def __init__(self, say):
        self.say = say
        self.entries = self.size = 0
        self.lock = threading.Lock()
        self.next_at = time.monotonic() + PROGRESS_EVERY_S

    def add(self, entries: int, size: int) -> None:
        with self.lock:
            self.entries += entries
            self.size += size
            now = time.monotonic()
            if now < self.next_at:
                return
            self.next_at = now + PROGRESS_EVERY_S
            entries, size = self.entries, self.size
        self.say(f"{entries:,} entries, {human_size(size)} listed so far")


class SnapshotRows:
    """A new snapshot's manifest rows, written while rsync lists them (see _copy_tree)."""

    def __init__(self, algorithm: str, previous: manifest.PreviousFiles | None, resolve, tally: Tally | None = None):
        self.algorithm, self.previous, self.resolve, self.tally = algorithm, previous, resolve, tally
        self.spool = tempfile.TemporaryFile()
        self.files = self.entries = self.size = 0
        self.unknown: list[str] = []
        self._told_size = 0

    def add(self, item: manifest.Item) -> bool:
        """One entry: its checksum from the transfer, else from the previous manifest (unchanged file)."""
        if item.link_text:
            self.resolve(item)
        if item.type == "f":
            if not item.checksum and self.previous is not None:
                old = self.previous.get(item.path)
                if old and not item.written and old[0] == item.size and old[1] == item.mtime:
                    item.checksum = old[2]
            if not item.checksum:
                self.unknown.append(item.path)
            self.files += 1
            self.size += item.size
        self.entries += 1
        self.spool.write(item.row_line(self.algorithm).encode("ascii"))
        if self.tally is not None and self.entries % TALLY_BATCH == 0:
            self.tally.add(TALLY_BATCH, self.size - self._told_size)
            self._told_size = self.size
        return False  # kept on disk, not in memory

    def fill(self, checksums: dict[str, str | None]) -> None:
        """Rewrite the rows whose checksum was unknown."""
        spool, self.spool = self.spool, tempfile.TemporaryFile()
        spool.seek(0)
        for line in spool:
            if line.endswith(b"null}\n"):
                row = json.loads(line)
                if row.get("type") == "f" and checksums.get(row["path"]):
                    row[self.algorithm] = checksums[row["path"]]
                    line = (json.dumps(row) + "\n").encode("ascii")
            self.spool.write(line)
        spool.close()

    def close(self) -> None:
        self.spool.close()


def manifest_chunks(head: dict, parts: list[SnapshotRows]):
    """The header, then each part's rows in order."""
    yield (json.dumps(head) + "\n").encode()
    for rows in parts:
        rows.spool.seek(0)
        while data := rows.spool.read(1 << 20):
            yield data


@dataclass
class Part:
    """One rsync of a snapshot: how it ended and the manifest rows it listed."""

    code: int
    stderr: str
    stats: dict
    rows: SnapshotRows


def rsync_rows(ctx: Context, runner: Runner, argv: list[str], algorithm: str, rows_for, timeout: float, *,
               tops: frozenset[str] | None = None, stdin: bytes | None = None, cancel: Cancel | None = None) -> Part:
    """One rsync, its listing turned into manifest rows as it runs (a fresh set for each retry)."""
    attempts: list[SnapshotRows] = []

    def new_attempt():
        if attempts:
            attempts[-1].close()
        attempts.append(rows_for(tops))
        return attempts[-1].add

    try:
        code, reader, stderr = run_rsync(runner, argv, timeout, ctx.progress, manifest.CHECKSUM_WIDTH[algorithm],
                                         new_attempt, stdin=stdin, cancel=cancel)
    except BaseException:
        if attempts:
            attempts[-1].close()
        raise
    return Part(code, stderr, parse_stats(reader.text()), attempts[-1])


PARALLEL_MAX = 4


def deal(entries: list[tuple[bytes, bool]], workers: int) -> list[list[bytes]]:
    """Top-level (name, is a folder) entries cut into `workers` runs of neighbours in rsync's own order: files
    first, then folders as if named with a trailing "/". The parts' rows, one run after the other, are then
    in the order one rsync lists the whole tree, so the next run, split alike or not, reads the previous
    manifest in step."""
    ordered = [name for name, folder in sorted(entries, key=lambda e: (e[1], e[0] + b"/" if e[1] else e[0]))]
    parts = min(workers, len(ordered))
    bounds = [len(ordered) * k // parts for k in range(parts + 1)]
    return [ordered[bounds[k]:bounds[k + 1]] for k in range(parts)]


def parallel_groups(runner: Runner, source: str, wanted: int | None) -> list[list[bytes]] | None:
    """How a local tree's top-level names are shared among `wanted` rsyncs (default one per core, up to
    PARALLEL_MAX), or None for one rsync.

    Linking an unchanged file into a new snapshot, and writing a new one into the page cache, is kernel
    work that one rsync does on one core: rsyncs over disjoint parts of the tree do it on all of them
    (measured here at 50,000 files: a 2nd snapshot 0.57x, a 1st snapshot of 1 GiB 0.55x of one rsync)."""
    workers = (wanted or min(cores(runner), PARALLEL_MAX)) if runner.host_name == LOCAL else 1
    if workers < 2:
        return None
    try:
        with os.scandir(os.fsencode(source)) as found:
            entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in found]
    except OSError:
        return None  # the single rsync reports it
    return deal(entries, workers) if len(entries) >= 2 else None


def copy_in_parts(ctx: Context, runner: Runner, src: str, dst: str, copying: dict, groups: list[list[bytes]], rows_for,
                  timeout: float) -> list[Part]:
    """A snapshot made by one rsync per group of top-level names, in parallel, between two copies of the root
    folder alone: the first creates it (no two rsyncs race to), the last sets its time once everything is in
    and lists its manifest row. Rows: the root's, then each group's. Ctrl-C stops every rsync (SIGTERM and
    SIGKILL end bak, and its rsyncs with it: the orphan guard)."""
    from concurrent.futures import ThreadPoolExecutor

    root_only = rsync_argv(src, dst, excludes=["/*"], algorithm=copying["algorithm"])
    first = rsync_rows(ctx, runner, root_only, copying["algorithm"], rows_for, timeout, tops=frozenset())
    first.rows.close()
    if first.code not in (0, 24):
        return [first]
    cancel = Cancel()
    argv = rsync_argv(src, dst, files_from=True, ignore_missing=True, **copying)
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        futures = [pool.submit(rsync_rows, ctx, runner, argv, copying["algorithm"], rows_for, timeout,
                               stdin=b"\0".join(group) + b"\0", tops=frozenset(manifest.fs_text(name) for name in group),
                               cancel=cancel) for group in groups]
        try:
            parts = [future.result() for future in futures]
        except BaseException:
            cancel.request()
            for future in futures:
                if future.done() and future.exception() is None:
                    future.result().rows.close()
            raise
    if any(part.code not in (0, 24) for part in parts):
        return parts
    return [rsync_rows(ctx, runner, root_only, copying["algorithm"], rows_for, timeout, tops=frozenset())] + parts


# Folders a restore never replaces, whatever --force says: the system's own, and pseudo filesystems below.
SYSTEM_FOLDERS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found", "/media",
    "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/local", "/usr/sbin",
    "/usr/share", "/usr/src", "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/log", "/var/mail",
    "/var/opt", "/var/spool", "/var/tmp", "/etc/ssh", "/etc/systemd"})
PSEUDO_FILESYSTEMS = ("/proc/", "/sys/", "/dev/", "/run/")
STAGE_SUFFIX = ".bak-restoring"  # a new folder a restore builds, renamed to its final name at the end
DRILL_PREFIX = "bak-drill."      # a drill's scratch folder in the host's temp folder


def restore_place(into: str | None, default: str, local: bool) -> str:
    """Where a tree is restored: `default` (beside the original), or --into, which must be an absolute path
    (`~/...` too on this machine): a relative one means one thing here and another over SSH, and `-x` or
    `--delete` would reach a tool as an option."""
    if into is None:
        return default.rstrip("/") or "/"
    path = os.path.expanduser(into) if local else into
    if not (os.path.isabs(path) if local else path.startswith("/")):
        raise BadInput(f"--into {into[:80]!r} is not an absolute path", where="--into",
                       hint="Give the full path of the folder to restore into, e.g. /srv/restore/documents.")
    return posixpath.normpath(path) if path.startswith("/") else os.path.normpath(path)


def refuse_system_folder(runner: Runner, destination: str) -> str:
    """`destination` resolved on its host (links followed); refused if it is the root, a system folder, a place
    in a pseudo filesystem or the home folder itself: replacing one deletes everything the backup lacks."""
    home = os.path.expanduser("~") if runner.host_name == LOCAL else "."  # a command over SSH starts at home
    resolved = runner.run(["realpath", "-m", "--", destination, home]).stdout_text.splitlines()
    real, home_real = (resolved + ["", ""])[:2]
    if real in SYSTEM_FOLDERS or real == home_real or any(p.startswith(PSEUDO_FILESYSTEMS) for p in (real, destination)):
        what = ("the filesystem root" if real == "/" else "the home folder" if real == home_real else
                "a system folder" if real in SYSTEM_FOLDERS else "in a pseudo filesystem (/proc, /sys, /dev, /run)")
        raise Refused(f"{destination}" + (f" ({real})" if real != destination else "") + f" is {what}: bak never "
                      "restores into it (a restore there deletes everything the backup does not hold)",
                      where="--into", code="system_folder",
                      hint="Restore into a new folder (omit --into, or give a new path), then copy what you need.")
    return real


def deletions_of(runner: Runner, destination: str, expected: manifest.Manifest, excludes: list[str]) -> list[str]:
    """What a forced restore of a snapshot into `destination` removes: entries there that the snapshot does not
    hold, rsync's excludes left alone (rsync --delete spares them too)."""
    found = tree_items(runner, destination, "md5", checksums=False, excludes=excludes)
    return sorted(item.path for item in found if item.path != "." and item.path not in expected.rows)


def inside(runner: Runner, root: str, relative: str) -> bool:
    """Whether root/relative, resolved on its host, is still under root: no symlink on the way leads out."""
    out = runner.run(["realpath", "-m", "--", root, posixpath.join(root, relative)]).stdout_text.splitlines()
    return len(out) == 2 and out[1] == posixpath.normpath(posixpath.join(out[0], relative))


class RsyncSnapshot(Method):
    name = "rsync"
    single_files = True

    def key(self, target: Target) -> str:
        return target.name

    def source(self, target: Target) -> str:
        return source_path(target)

    def preflight(self, ctx: Context, target: Target) -> None:
        source = self.source(target)
        if ctx.hosts.runner(target.host).run(["test", "-d", source], check=False).returncode != 0:
            raise BadInput(f"the source {source} of {target.name} is not a folder on {target.host}", where=target.name,
                           code="source_missing", hint="Check the target's source path (a folder), and that it is mounted.")

    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        listings = {store.name: scan(store, target) for store in stores}
        name = fresh_name(ctx, target, list(listings.values()), naming.rsync_name(self.key(target), ctx.now),
                          naming.rsync_name(self.key(target), ctx.now, with_time=True))
        folders = [store for store in stores if store.kind != "restic"]
        made = [(store, self._snapshot(ctx, target, store, listings[store.name], name)) for store in folders]
        if len(folders) < len(stores):  # a restic repository backs up a finished snapshot folder
            from bak.methods import restic_tree

            made += [(store, restic_tree.copy_for_create(self, ctx, target, store, listings[store.name], name, made[:len(folders)]))
                     for store in stores if store.kind == "restic"]
        order = {store.name: index for index, store in enumerate(stores)}
        copies = [copy for _, copy in sorted(made, key=lambda pair: order[pair[0].name])]
        good = next((c for c in copies if c["ok"]), {})
        op.bytes = good.get("size")
        return {"target": target.name, "name": name, "size": good.get("size"), "added_bytes": good.get("added_bytes"),
                "copies": copies}

    def _snapshot(self, ctx: Context, target: Target, store: Store, listing: Listing, name: str) -> dict:
        partial = name + naming.PARTIAL_SUFFIX
        clear_leftovers(ctx, store, listing, keep=partial)
        return self._copy_tree(ctx, target, store, folder_of(target), name, source_host=target.host,
                               source=self.source(target).rstrip("/") + "/", previous=listing.newest_good(ctx.now),
                               resumed=any(p.name == partial for p in listing.partials))

    def _copy_tree(self, ctx: Context, target: Target, store: Store, folder: str, name: str, *, source_host: str,
                   source: str, previous: Backup | None, resumed: bool = False, relative: bool = False) -> dict:
        """rsync `source` into folder/NAME.partial on the store, write its manifest, rename it to NAME.

        The manifest is written while rsync runs, a row per entry as rsync lists it, into an unnamed
        temp file (gone with bak whatever happens), then streamed to the store: memory stays flat."""
        partial = name + naming.PARTIAL_SUFFIX
        started_at = datetime.now()
        copy = {"store": store.name, "location": store.location(folder, name), "ok": False, "error": None,
                "name": name, "resumed": resumed, "link_dest": previous.name if previous else None}
        try:
            store.make_folder(folder)
            runner, src, dst, ssh, far = transfer(ctx, source_host, source, store.host_name, store.path_of(folder, partial) + "/")
            algorithm = algorithm_for(ctx, runner.host_name, far)
            options = target.options
            copying = dict(link_dest=store.path_of(previous.folder, previous.name) if previous else None,
                           excludes=options.get("excludes") or [], bwlimit=options.get("bwlimit_kib") or 0,
                           checksum=options.get("checksum", False), ssh=ssh, algorithm=algorithm)
            store_runner = ctx.hosts.runner(store.host_name)
            root = store.path_of(folder, partial)

            tally = Tally(lambda text: ctx.progress(f"{target.name}: {text} ({name} on {store.name})"))

            def rows_for(tops: frozenset[str] | None = None) -> SnapshotRows:
                return SnapshotRows(algorithm, self._previous_files(store, previous, algorithm, tops),
                                    lambda item: resolve_link(store_runner, root, item), tally)

            groups = None if relative or ssh or copying["bwlimit"] else parallel_groups(runner, src, options.get("parallel"))
            where = f"{'resuming ' if resumed else ''}{name}{f', {len(groups)} rsyncs in parallel' if groups else ''}"
            ctx.progress(f"{target.name}: rsync to {store.name} ({where})")
            timeout = target.timeout.total_seconds()
            if groups:
                parts = copy_in_parts(ctx, runner, src, dst, copying, groups, rows_for, timeout)
            else:
                whole = rsync_argv(src, dst, relative=relative, **copying)
                parts = [rsync_rows(ctx, runner, whole, algorithm, rows_for, timeout)]
            try:
                for part in parts:
                    if part.code not in (0, 24):
                        raise_for_exit(part.code, part.stderr, store.name, ctx, target.name)
                raise_for_exit(max(part.code for part in parts), "\n".join(part.stderr for part in parts), store.name,
                               ctx, target.name)
                stats = {key: sum(part.stats.get(key, 0) for part in parts) for key in STATS.values()
                         if any(key in part.stats for part in parts)}
                unknown = [path for part in parts for path in part.rows.unknown]
                if unknown:  # a resumed partial's files, or no previous manifest to take them from
                    found = {i.path: i.checksum for i in tree_items(store_runner, root, algorithm, only=unknown)}
                    for part in parts:
                        part.rows.fill(found)
                head = manifest.header(started_at, algorithm, _writes_owners(ctx, store),
                                       *(sum(getattr(part.rows, key) for part in parts) for key in ("files", "entries", "size")),
                                       stats.get("transferred_size"))
                store.write_small(folder, name + MANIFEST, manifest_chunks(head, [part.rows for part in parts]),
                                  mtime=started_at.timestamp())
            finally:
                for part in parts:
                    part.rows.close()
            try:
                store.rename(folder, partial, name)
            except BaseException:
                store.remove(folder, name + MANIFEST)
                raise
            copy.update(ok=True, files=head["files"], size=head["size"], added_bytes=head["added"], stats=stats,
                        rsyncs=len(groups) if groups else 1)
        except BakError as exc:
            copy["error"] = exc.to_error()
            if exc.code == "disk_full":
                store.remove(folder, partial)
        return copy

    @staticmethod
    def _previous_files(store: Store, previous: Backup | None, algorithm: str,
                        tops: frozenset[str] | None = None) -> manifest.PreviousFiles | None:
        """The previous snapshot's manifest, streamed, for the checksums of files rsync did not copy again
        (only those under `tops` for one part of a parallel copy; none for the root folder alone)."""
        if previous is None or tops == frozenset():
            return None
        try:
            stream = store.open_read(previous.folder, previous.name + MANIFEST)
        except (OSError, BakError):
            return None
        return manifest.PreviousFiles(lines(stream), algorithm, tops)

    def _check_tree(self, runner: Runner, root: str, expected: manifest.Manifest, owners: bool) -> tuple[list, dict]:
        if expected.version < 2:
            items = tree_items(runner, root, "md5", checksums=False)
            digests = sha256_of(runner, root, [i.path for i in items if i.type == "f"])
        else:
            items, digests = checksummed_tree(runner, root, expected.algorithm)
        for item in items:
            if item.type == "f":
                item.checksum = digests.get(item.path)
        return items, manifest.differences(expected, items, owners=owners and expected.head.get("owners", False))

    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        if store.kind == "restic":
            from bak.methods import restic_tree

            return restic_tree.verify(self, ctx, target, store, backup)
        runner = ctx.hosts.runner(store.host_name)
        root = store.path_of(backup.folder, backup.name)
        expected = read_manifest(store, backup.folder, backup.name)
        result = {"store": store.name, "name": backup.name, "size": None, "sha256": None, "files": None,
                  "checksum": "ok", "format": None}
        problems = []
        if expected is None:
            result["checksum"] = "missing"
            return passed(store, backup, result, ["no manifest (or not readable)"])
        items, diff = self._check_tree(runner, root, expected, _writes_owners(ctx, store))
        files = [i for i in items if i.type == "f"]
        result.update(files=len(files), size=sum(i.size for i in files), entries=len(items))
        if any(diff.values()):
            result["checksum"] = "mismatch"
            result["differences"] = {k: v[:20] for k, v in diff.items() if v}
            problems += [f"{len(v)} {k}: {', '.join(v[:5])}" for k, v in diff.items() if v]
        return passed(store, backup, result, problems)

    def check_restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                      force: bool, options: dict) -> dict:
        original = self.source(target).rstrip("/")
        destination = restore_place(into, f"{original}.restored-{ctx.now:%Y%m%d_%H%M%S}", target.host == LOCAL)
        runner = ctx.hosts.runner(target.host)
        single = options.get("file")
        refuse_system_folder(runner, destination)
        if single is not None:
            parts = Path(single).parts
            if not single or single.startswith("/") or ".." in parts or "\n" in single:
                raise BadInput(f"--file {single!r} must be a path inside the snapshot", where="--file")
            # In a restic repository the tree is checked once restored, before anything is written.
            if store.kind != "restic" and not inside(ctx.hosts.runner(store.host_name),
                                                      store.path_of(backup.folder, backup.name), single):
                raise Refused(f"{single} leads out of the snapshot through a symbolic link; nothing was restored",
                              where="--file", code="symlink_in_path")
        replaced = posixpath.join(destination, single) if single else destination
        exists = runner.run(["test", "-e", replaced], check=False).returncode == 0 or \
            runner.run(["test", "-L", replaced], check=False).returncode == 0
        if single and not inside(runner, destination, posixpath.dirname(single) or "."):
            raise Refused(f"{posixpath.dirname(single)} under {destination} is a symbolic link: restoring through it would "
                          "write outside the restore target", where="--file", code="symlink_in_path",
                          hint="Restore beside it (omit --into) or remove the link first.")
        if exists and not force:
            raise Refused(f"{replaced} already exists; restore never overwrites", where="--into", code="would_overwrite",
                          hint="Omit --into to restore beside it, pick a new folder, or pass --force (after a safety snapshot).")
        plan = {"path": destination, "replaces": replaced if exists else None}
        if exists and not single:
            if runner.run(["test", "-d", destination], check=False).returncode != 0:
                raise Refused(f"{destination} is not a folder: a snapshot is restored into a folder only", where="--into",
                              code="would_overwrite", hint="Give a folder, or a new path.")
            expected = read_manifest(store, backup.folder, backup.name)
            if expected is not None:
                plan.update(self._deletion_words(runner, destination, expected, target))
        return plan

    @staticmethod
    def _deletion_words(runner: Runner, destination: str, expected: manifest.Manifest, target: Target) -> dict:
        """What replacing `destination` removes, counted and said in words."""
        deleted = deletions_of(runner, destination, expected, target.options.get("excludes") or [])
        if deleted:
            sample = ", ".join(deleted[:5]) + (", ..." if len(deleted) > 5 else "")
            effect = (f"replaces {destination}: {len(deleted)} file(s) and folder(s) there that are not in the backup "
                      f"will be DELETED ({sample}); the others are overwritten with the backup's version")
        else:
            effect = f"replaces {destination}: nothing there is deleted (each entry is in the backup), changed files are overwritten"
        return {"deletes": len(deleted), "deleted": deleted[:20],
                "effect": effect + "; a safety snapshot of everything it may remove is taken first"}

    def _check_copy(self, ctx: Context, store: Store, backup: Backup, single: str | None) -> None:
        """The copy must match its manifest before anything is restored from it (the whole tree, or one file)."""
        expected = read_manifest(store, backup.folder, backup.name)
        if expected is None:
            raise VerifyFailed(f"{backup.name} on {store.name} has no readable manifest", where=f"{store.name}:{backup.name}")
        runner = ctx.hosts.runner(store.host_name)
        root = store.path_of(backup.folder, backup.name)
        if single is None:
            _, diff = self._check_tree(runner, root, expected, _writes_owners(ctx, store))
        else:
            wanted = {single: expected.rows[single]} if single in expected.rows else {}
            found = [i for i in tree_items(runner, root, expected.algorithm) if i.path == single]
            diff = manifest.differences(manifest.Manifest(expected.head, wanted), found, owners=False)
            diff["unexpected"] = []
        if any(diff.values()):
            first = next(f"{k}: {v[0]}" for k, v in diff.items() if v)
            raise VerifyFailed(f"{backup.name} on {store.name} does not match its manifest ({first})",
                               where=f"{store.name}:{backup.name}")

    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        if store.kind == "restic":
            from bak.methods import restic_tree

            return restic_tree.restore(self, ctx, target, store, backup, into=into, force=force, options=options)
        plan = self.check_restore(ctx, target, store, backup, into=into, force=force, options=options)
        destination, exists = plan["path"], plan["replaces"] is not None
        runner = ctx.hosts.runner(target.host)
        single = options.get("file")
        if not options.get("drill"):  # a drill restores first and compares after
            self._check_copy(ctx, store, backup, single)
        safety = self._safety_copy(ctx, target, options.get("safety_store") or store, destination, single) if exists else None
        # A new folder is built under a temp name beside it and renamed at the end: a killed restore leaves no
        # half folder under the final name (which the next run would refuse); the journal says where it was.
        building = _absent(runner, destination)
        build = destination + STAGE_SUFFIX if building else destination
        if building:
            if not _absent(runner, build):
                raise Refused(f"{build} is in the way of the restore (not one bak left: those are journaled and removed)",
                              where="--into", code="would_overwrite", hint="Move it away, or restore elsewhere.")
            ctx.stage(f"path:{build}")
        source = store.path_of(backup.folder, backup.name) + "/" + (single or "")
        parent = posixpath.join(build, posixpath.dirname(single)) if single else build
        runner_, src, dst, ssh, _ = transfer(ctx, store.host_name, source, target.host, parent + "/")
        started = time.monotonic()
        try:
            runner.run(["mkdir", "-p", "--", parent])
            argv = rsync_argv(src, dst, ssh=ssh, delete=exists and not single,
                              excludes=[] if single else target.options.get("excludes") or [])
            code, reader, stderr = run_rsync(runner_, argv, target.timeout.total_seconds(), ctx.progress,
                                             manifest.CHECKSUM_WIDTH["md5"], lambda: lambda item: False)
            if code not in (0, 24):
                raise CommandFailed(f"restore rsync exited {code}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}",
                                    returncode=code, stderr_tail=stderr[-2000:], where=target.name,
                                    hint=f"The replaced state is in the safety snapshot {safety}." if safety else None)
            if building:
                if not _absent(runner, destination):
                    raise Refused(f"{destination} appeared while the restore ran; it was left as it is", where="--into",
                                  code="would_overwrite", hint="Restore elsewhere.")
                runner.run(["mv", "-T", "--", build, destination])
        except BakError:
            if building:  # a failed restore leaves nothing; a killed one is removed by the next one (journaled)
                runner.run(["rm", "-rf", "--", build], check=False)
                ctx.unstage(f"path:{build}")
            raise
        if building:
            ctx.unstage(f"path:{build}")
        return {"target": target.name, "backup": backup.name, "store": store.name, "path": destination,
                "file": single, "replaced": exists, "safety_snapshot": safety, "deleted": plan.get("deletes"),
                "duration_s": round(time.monotonic() - started, 3), "files": parse_stats(reader.text()).get("files_transferred")}

    def _safety_copy(self, ctx: Context, target: Target, store: Store, destination: str, single: str | None) -> str:
        """Everything a forced restore may replace or delete, snapshotted apart from the backups first.
        Excluded paths are left out, as in the backups: the restore leaves them in place."""
        listing = scan(store, target)
        name = free_name(store, safety_folder_of(target), lambda when: naming.rsync_name(self.key(target), when, with_time=True))
        source = f"{destination}/./{single}" if single else destination + "/"
        if store.kind == "restic":
            from bak.methods import restic_tree

            copy = restic_tree.copy_tree(self, ctx, target, store, safety_folder_of(target), name, source_host=target.host,
                                         source=source, relative=bool(single))
        else:
            copy = self._copy_tree(ctx, target, store, safety_folder_of(target), name, source_host=target.host,
                                   source=source, previous=listing.newest_good(ctx.now), relative=bool(single))
        if not copy["ok"]:
            raise Refused(f"the safety snapshot of {destination} failed, so nothing was replaced", where=target.name,
                          code="safety_snapshot_failed", hint=copy["error"]["message"] if copy["error"] else None)
        store.write_small(safety_folder_of(target), name + ".protected", b"")
        where = f"{store.name}:{safety_folder_of(target)}/{name}"
        ctx.warnings.append(f"safety snapshot of {destination} before replacing it: {where} (kept apart, protected)")
        return where

    def drill(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """Restore the snapshot into a scratch folder on the target's host, compare every entry, remove it."""
        runner = ctx.hosts.runner(target.host)
        temp = runner.run(["sh", "-c", 'printf %s "${TMPDIR:-/tmp}"']).stdout_text or "/tmp"
        scratch = posixpath.join(temp, f"{DRILL_PREFIX}{target.name}.{ctx.now:%Y%m%d%H%M%S}")
        ctx.stage(f"path:{scratch}")  # journaled before it exists: a drill killed at any point leaves nothing unknown
        made = False
        tree = f"{scratch}/tree"
        result = {"target": target.name, "backup": backup.name, "store": store.name, "checks": []}
        diff: dict = {}
        try:
            runner.run(["mkdir", "-m", "700", "--", scratch])  # never one already there: mkdir fails on it
            made = True
            expected = read_manifest(store, backup.folder, backup.name)
            if expected is None:
                raise VerifyFailed(f"drill of {backup.name}: it has no readable manifest to check a restore against",
                                   where=f"{store.name}:{backup.name}", code="drill_failed", details={"result": result})
            restored = self.restore(ctx, target, store, backup, into=tree, force=False, options={"drill": True})
            result["restore_duration_s"] = restored["duration_s"]
            _, diff = self._check_tree(runner, tree, expected, _is_root(runner))
            result["checks"].append({"check": f"{len(expected.rows)} entries match the manifest",
                                     "ok": bool(expected.rows) and not any(diff.values()),
                                     "differences": [p for k in ("missing", "unexpected", "changed") for p in diff[k]][:20]})
        finally:
            if made:
                runner.run(["rm", "-rf", "--", scratch], check=False)
            ctx.unstage(f"path:{scratch}")
        return drill_verdict(result, diff, store, backup, "the restored tree differs from its manifest")

    def remove_stage(self, ctx: Context, target: Target, where: str) -> bool:
        """A half restored folder (NAME.bak-restoring) or a drill's scratch folder on the target's host; anything
        else the journal might say is left alone."""
        kind, _, path = where.partition(":")
        if kind == "local":
            from bak.methods import restic_tree

            return restic_tree.remove_scratch(path)
        if kind != "path" or not (path.endswith(STAGE_SUFFIX) or posixpath.basename(path).startswith(DRILL_PREFIX)):
            return False
        runner = ctx.hosts.runner(target.host)
        if _absent(runner, path):
            return False
        runner.run(["rm", "-rf", "--", path])
        return True


def _absent(runner: Runner, path: str) -> bool:
    return runner.run(["test", "-e", path], check=False).returncode != 0 and \
        runner.run(["test", "-L", path], check=False).returncode != 0


def _is_root(runner: Runner) -> bool:
    if runner.host_name == LOCAL:
        return hasattr(os, "geteuid") and os.geteuid() == 0
    return runner.host.user == "root"


def _writes_owners(ctx: Context, store: Store) -> bool:
    """rsync keeps owners only when it writes as root: only then is a changed owner a finding."""
    return store.kind in ("local", "ssh") and _is_root(ctx.hosts.runner(store.host_name))
