"""File trees as dated rsync snapshots, hard-linked to the previous one (--link-dest).

Names: `rsync-{target}-{YYYY-MM-DD}` (the seed's daily name); a second snapshot the same day
is `rsync-{target}-{YYYY-MM-DD_HHMMSS}`. A snapshot is written into `NAME.partial/` and renamed
when complete; a killed run's partial folder is resumed by the next run (rsync --partial).
Each snapshot gets a `NAME.manifest` (JSON lines: path, size, mtime, sha256); files that rsync
did not transfer keep the previous manifest's hash, so only changed bytes are hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
from datetime import datetime
from pathlib import Path

from bak import naming
from bak.catalog import Backup, folder_of, scan
from bak.config import LOCAL, Host, Target
from bak.errors import BadInput, CommandFailed, Refused, TransportError, VerifyFailed
from bak.journal import Operation
from bak.methods.base import Context, Method
from bak.run.base import Runner
from bak.stores import Store
from bak.verify import passed

TRANSPORT_FAILURES = {10, 12, 30, 35, 255}
RETRIES = 3
BACKOFF_S = 2.0
MANIFEST = ".manifest"
STATS = {"Number of files": "files", "Number of regular files transferred": "files_transferred",
         "Total file size": "total_size", "Total transferred file size": "transferred_size",
         "Literal data": "literal_data", "Matched data": "matched_data", "Total bytes sent": "bytes_sent",
         "Total bytes received": "bytes_received"}


# --- argv builders (pure) ------------------------------------------------------------------
def ssh_transport(host: Host, known_hosts: Path) -> str:
    """rsync's -e: our key, our known_hosts, never a prompt or an auto-accepted key."""
    argv = ["ssh", "-p", str(host.port), "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(host.connect_timeout)}", "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3"]
    if host.key_file:
        argv += ["-i", str(Path(host.key_file).expanduser()), "-o", "IdentitiesOnly=yes"]
    return shlex.join(argv)


def remote_spec(host: Host, path: str) -> str:
    address = f"[{host.address}]" if ":" in host.address else host.address
    return f"{host.user}@{address}:{path}"


def rsync_argv(source: str, dest: str, *, link_dest: str | None = None, excludes: list[str] | tuple = (),
               bwlimit: int = 0, checksum: bool = False, ssh: str | None = None, delete: bool = False) -> list[str]:
    # -ii lists unchanged files too, with size and mtime: the manifest needs no second walk of the tree.
    argv = ["rsync", "-a", "--partial", "--numeric-ids", "--stats", "--no-human-readable", "-ii",
            "--out-format=%i %l %M %n"]
    if ssh:
        argv += ["-e", ssh, "--secluded-args"]
    if checksum:
        argv.append("--checksum")
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    if delete:
        argv.append("--delete")
    argv += [f"--exclude={pattern}" for pattern in excludes]
    if link_dest:
        argv.append(f"--link-dest={link_dest}")
    return argv + [source, dest]


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


_ITEM = re.compile(r"^([<>ch.*]f.{9}) (\d+) (\d{4})/(\d\d)/(\d\d)-(\d\d):(\d\d):(\d\d) (.+)$")


def listed_files(stdout: str) -> dict[str, tuple[bool, int, int]]:
    """Regular files in rsync's -ii listing: {path: (written now, size, mtime)}."""
    files = {}
    for line in stdout.splitlines():
        match = _ITEM.match(line)
        if match:
            y, mo, d, h, mi, sec = (int(match.group(i)) for i in range(3, 9))
            mtime = int(datetime(y, mo, d, h, mi, sec).timestamp())
            files[match.group(9)] = (match.group(1)[0] in ">c", int(match.group(2)), mtime)
    return files


def failed_files(stderr: str) -> list[str]:
    return re.findall(r'rsync: \[[a-z]+\] [^"]*"([^"]+)"', stderr)


def vanished_files(stderr: str) -> list[str]:
    return re.findall(r'file has vanished: "([^"]+)"', stderr)


# --- the transport ---------------------------------------------------------------------------
def transfer(ctx: Context, src_host: str, src: str, dst_host: str, dst: str) -> tuple[Runner, str, str, str | None]:
    """Where rsync runs and how it names both ends: (runner, source, dest, ssh -e or None)."""
    from bak.run.hosts import known_hosts_path

    if src_host == dst_host:
        return ctx.hosts.runner(src_host), src, dst, None
    if src_host == LOCAL:
        host = ctx.config.host(dst_host)
        return ctx.hosts.runner(LOCAL), src, remote_spec(host, dst), ssh_transport(host, known_hosts_path(host))
    if dst_host == LOCAL:
        host = ctx.config.host(src_host)
        return ctx.hosts.runner(LOCAL), remote_spec(host, src), dst, ssh_transport(host, known_hosts_path(host))
    raise BadInput(f"rsync between two remote hosts ({src_host} -> {dst_host}) is not supported",
                   where="destinations", hint="Put the destination on the source's host or on this machine.")


def run_rsync(runner: Runner, argv: list[str], timeout: float, progress) -> tuple[int, str, str]:
    """rsync with bounded retries on transport failures; returns (code, stdout, stderr)."""
    for attempt in range(1, RETRIES + 1):
        try:
            out = runner.run(argv, check=False, timeout=timeout)
        except TransportError:
            if attempt == RETRIES:
                raise
            code, stdout, stderr = 255, "", "connection dropped"
        else:
            code, stdout, stderr = out.returncode, out.stdout_text, out.stderr_text
            if code not in TRANSPORT_FAILURES or attempt == RETRIES:
                return code, stdout, stderr
        progress(f"rsync transport failure (exit {code}), retry {attempt} of {RETRIES - 1} in {BACKOFF_S * attempt:.0f}s")
        time.sleep(BACKOFF_S * attempt)
    return code, stdout, stderr


def source_path(target: Target) -> str:
    path = target.options.get("source") or target.options["path"]
    if target.host == LOCAL:
        return str(Path(path).expanduser())
    return path[2:] if path.startswith("~/") else path  # relative paths are relative to the remote home


# --- listing and hashing a tree, where it lives --------------------------------------------
def list_tree(runner: Runner, root: str) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime)} of the regular files under root."""
    if runner.host_name == LOCAL:
        files: dict[str, tuple[int, int]] = {}
        pending = [root]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        files[os.path.relpath(entry.path, root)] = (st.st_size, int(st.st_mtime))
        return files
    out = runner.run(["find", root, "-type", "f", "-printf", "%P\\0%s\\0%T@\\0"]).stdout.split(b"\0")
    return {out[i].decode(): (int(out[i + 1]), int(float(out[i + 2]))) for i in range(0, len(out) - 2, 3)}


def hash_files(runner: Runner, root: str, paths: list[str]) -> dict[str, str]:
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
                     stdin=b"\0".join(f"{root}/{p}".encode() for p in paths) + b"\0").stdout
    digests = {}
    for record in out.split(b"\0"):
        if record:
            digest, _, path = record.decode().partition("  ")
            digests[os.path.relpath(path, root)] = digest
    return digests


def read_manifest(store: Store, folder: str, name: str) -> dict[str, dict]:
    try:
        text = store.read_small(folder, name + MANIFEST, 1 << 30).decode()
    except (OSError, FileNotFoundError):
        return {}
    return {row["path"]: row for row in map(json.loads, filter(None, text.splitlines()))}


class RsyncSnapshot(Method):
    name = "rsync"

    def key(self, target: Target) -> str:
        return target.name

    def source(self, target: Target) -> str:
        return source_path(target)

    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        copies = []
        for store in stores:
            copies.append(self._snapshot(ctx, target, store))
        total = sum(c.get("stats", {}).get("transferred_size", 0) for c in copies)
        op.bytes = total
        if not all(c["ok"] for c in copies):
            op.status = "partial"
        first = next((c for c in copies if c["ok"]), copies[0])
        return {"target": target.name, "name": first.get("name"), "size": total, "copies": copies}

    def _snapshot(self, ctx: Context, target: Target, store: Store) -> dict:
        folder = folder_of(target)
        listing = scan(store, target)
        final_names = {b.name for b in listing.backups}
        name = naming.rsync_name(self.key(target), ctx.now)
        if name in final_names:
            name = naming.rsync_name(self.key(target), ctx.now, with_time=True)
        partial = name + naming.PARTIAL_SUFFIX
        for leftover in listing.partials:
            if leftover.name != partial:
                store.remove(folder, leftover.name)
                ctx.warnings.append(f"removed {leftover.name} on {store.name}, left by an interrupted run")
        resumed = any(p.name == partial for p in listing.partials)
        previous = listing.backups[0] if listing.backups else None
        copy = {"store": store.name, "location": store.location(folder, name), "ok": False, "error": None,
                "name": name, "resumed": resumed, "link_dest": previous.name if previous else None}
        try:
            if store.host_name == LOCAL:
                Path(store.path_of(folder)).mkdir(parents=True, exist_ok=True, mode=0o700)
            else:
                store.makedirs(store.path_of(folder))
            runner, src, dst, ssh = transfer(ctx, target.host, self.source(target).rstrip("/") + "/",
                                             store.host_name, store.path_of(folder, partial) + "/")
            options = target.options
            argv = rsync_argv(src, dst, link_dest=store.path_of(folder, previous.name) if previous else None,
                              excludes=options.get("excludes") or [], bwlimit=options.get("bwlimit_kib") or 0,
                              checksum=options.get("checksum", False), ssh=ssh)
            ctx.progress(f"{target.name}: rsync to {store.name} ({'resuming ' if resumed else ''}{name})")
            code, stdout, stderr = run_rsync(runner, argv, target.timeout.total_seconds(), ctx.progress)
            copy["stats"] = parse_stats(stdout)
            if code == 24:
                ctx.warnings.append(f"{target.name}: files vanished during the copy (normal for a live tree): "
                                    + ", ".join(vanished_files(stderr)[:10]))
            elif code == 23:
                raise CommandFailed(f"rsync could not copy some files: {', '.join(failed_files(stderr)[:20]) or stderr[-300:]}",
                                    returncode=23, stderr_tail=stderr[-2000:], where=store.name, code="rsync_partial",
                                    hint="Check permissions on the listed files; the snapshot was not finalised.")
            elif code in TRANSPORT_FAILURES:
                raise TransportError(f"rsync transport to {store.name} failed after {RETRIES} attempts (exit {code}): "
                                     f"{stderr.strip().splitlines()[-1] if stderr.strip() else ''}", where=store.name,
                                     hint="The partial snapshot is kept; the next run resumes it.")
            elif code != 0:
                text = stderr.strip().splitlines()[-1] if stderr.strip() else ""
                nospace = "No space left" in stderr
                raise CommandFailed(f"rsync exited {code}: {text}", returncode=code, stderr_tail=stderr[-2000:],
                                    where=store.name, code="disk_full" if nospace else "rsync_failed",
                                    hint="Free space on the destination, then run again." if nospace else None)
            manifest = self._manifest(ctx, store, folder, partial, previous, listed_files(stdout))
            store.rename(folder, partial, name)
            store.write_small(folder, name + MANIFEST,
                              "".join(json.dumps(row, sort_keys=True) + "\n" for row in manifest).encode())
            copy.update(ok=True, files=len(manifest))
        except (CommandFailed, TransportError, BadInput) as exc:
            copy["error"] = exc.to_error()
            if exc.code == "disk_full":
                store.remove(folder, partial)
        return copy

    def _manifest(self, ctx, store: Store, folder: str, partial: str, previous: Backup | None,
                  files: dict[str, tuple[bool, int, int]]) -> list[dict]:
        """Hashes only what rsync wrote; the rest keeps the previous manifest's hash."""
        runner = ctx.hosts.runner(store.host_name)
        root = store.path_of(folder, partial)
        before = read_manifest(store, folder, previous.name) if previous else {}
        rows, to_hash = [], []
        for path, (written, size, mtime) in sorted(files.items()):
            old = before.get(path)
            if not written and old and old["size"] == size and old["mtime"] == mtime:
                rows.append(old)
            else:
                to_hash.append(path)
                rows.append({"path": path, "size": size, "mtime": mtime, "sha256": None})
        digests = hash_files(runner, root, to_hash)
        for row in rows:
            if row["sha256"] is None:
                row["sha256"] = digests[row["path"]]
        return rows

    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        runner = ctx.hosts.runner(store.host_name)
        root = store.path_of(backup.folder, backup.name)
        manifest = read_manifest(store, backup.folder, backup.name)
        files = list_tree(runner, root)
        digests = hash_files(runner, root, sorted(files))
        missing = sorted(set(manifest) - set(files))
        extra = sorted(set(files) - set(manifest))
        changed = sorted(p for p in set(files) & set(manifest) if digests[p] != manifest[p]["sha256"])
        result = {"store": store.name, "name": backup.name, "size": sum(size for size, _ in files.values()),
                  "sha256": None, "files": len(files), "checksum": "ok", "format": None}
        problems = []
        if not manifest:
            problems.append("no manifest")
            result["checksum"] = "missing"
        elif missing or extra or changed:
            result["checksum"] = "mismatch"
            for label, items in (("missing", missing), ("unexpected", extra), ("changed", changed)):
                if items:
                    problems.append(f"{len(items)} {label}: {', '.join(items[:5])}")
        return passed(store, backup, result, problems)

    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        original = self.source(target).rstrip("/")
        destination = into or f"{original}.restored-{ctx.now:%Y%m%d_%H%M%S}"
        runner = ctx.hosts.runner(target.host)
        exists = runner.run(["test", "-e", destination], check=False).returncode == 0
        safety = None
        if exists and not force:
            raise Refused(f"{destination} already exists; restore never overwrites", where="--into", code="would_overwrite",
                          hint="Omit --into to restore beside it, pick a new folder, or pass --force (after a safety snapshot).")
        if exists and destination == original:
            safety = self._snapshot(ctx, target, store)
            if not safety["ok"]:
                raise Refused(f"the safety snapshot of {original} failed, so it was not replaced", where=target.name,
                              code="safety_snapshot_failed", hint=safety["error"]["message"] if safety["error"] else None)
            ctx.warnings.append(f"safety snapshot of {original} before replacing it: {store.name}:{safety['name']}")
        single = options.get("file")
        source = store.path_of(backup.folder, backup.name) + "/" + (single or "")
        if single and (single.startswith("/") or ".." in Path(single).parts):
            raise BadInput(f"--file {single!r} must be a path inside the snapshot", where="--file")
        runner_, src, dst, ssh = transfer(ctx, store.host_name, source, target.host,
                                          destination + ("/" + str(Path(single).parent) if single else "") + "/")
        if not exists or single:
            ctx.hosts.runner(target.host).run(["mkdir", "-p", "--", destination + ("/" + str(Path(single).parent) if single else "")])
        started = time.monotonic()
        code, stdout, stderr = run_rsync(runner_, rsync_argv(src, dst, ssh=ssh, delete=force and not single),
                                         target.timeout.total_seconds(), ctx.progress)
        if code not in (0, 24):
            raise CommandFailed(f"restore rsync exited {code}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}",
                                returncode=code, stderr_tail=stderr[-2000:], where=target.name)
        return {"target": target.name, "backup": backup.name, "store": store.name, "path": destination,
                "file": single, "replaced": exists and not single, "safety_snapshot": safety and safety["name"],
                "duration_s": round(time.monotonic() - started, 3), "files": parse_stats(stdout).get("files_transferred")}

    def drill(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        """Restore the snapshot into a scratch folder on the target's host, check every file, remove it."""
        runner = ctx.hosts.runner(target.host)
        scratch = runner.run(["mktemp", "-d", "-t", "bak-drill.XXXXXXXX"]).stdout_text.strip()
        tree = f"{scratch}/tree"
        result = {"target": target.name, "backup": backup.name, "store": store.name, "checks": []}
        try:
            restored = self.restore(ctx, target, store, backup, into=tree, force=False, options={})
            result["restore_duration_s"] = restored["duration_s"]
            manifest = read_manifest(store, backup.folder, backup.name)
            files = list_tree(runner, tree)
            digests = hash_files(runner, tree, sorted(files))
            wrong = sorted(p for p in set(manifest) | set(files) if digests.get(p) != manifest.get(p, {}).get("sha256"))
            result["checks"].append({"check": f"{len(manifest)} files match the manifest", "ok": bool(manifest) and not wrong,
                                     "differences": wrong[:20]})
        finally:
            runner.run(["rm", "-rf", "--", scratch], check=False)
        result["passed"] = all(c["ok"] for c in result["checks"])
        if not result["passed"]:
            raise VerifyFailed(f"drill of {backup.name}: restored tree differs from its manifest ({len(wrong)} files)",
                               where=target.name, code="drill_failed", details={"result": result})
        return result
