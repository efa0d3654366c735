"""The recovery kit: bak's config, journal and known_hosts, and the runbook, in a `bak/` folder at the root
of every destination bak writes files to, refreshed after each `bak create`. On a fresh machine,
`bak bootstrap --from DESTINATION` puts them back, so recovery starts with one command even when the
machine that ran bak is gone.

Written through the stores (each file atomically), `kit.json` last with each file's size and sha256:
bootstrap takes a kit only when every file matches it. No secret is in it: the config holds references
only (the schema allows nothing else) and journal rows are scrubbed before they are written. The
catalogue never reads this folder: it is no target's and no kind's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from bak import __version__
from bak.config import LOCAL, Config, Host, key_path
from bak.dr import (KIT_CONFIG, KIT_FOLDER, KIT_INDEX, KIT_JOURNAL, KIT_KNOWN_HOSTS, KIT_TARBALL, RUNBOOK_HTML,
                    RUNBOOK_MD)
from bak.errors import BadInput, BakError, HostKeyUnknown, LockHeld, Refused, VerifyFailed, WriteFailed
from bak.report import Outcome

KIT_LOCK = ".recovery-kit"  # a lock name no target can have (target names start with a letter or digit)
KIT_FILE_LIMIT = 1 << 30
RESTORED = (KIT_CONFIG, KIT_JOURNAL, KIT_KNOWN_HOSTS)  # what bootstrap puts back (the runbooks are for reading)
KNOWN_HOSTS_HEAD = b"# bak's known_hosts: the SSH host keys bak trusted on the machine that wrote this kit\n"
SSH_SOURCE = re.compile(r"^(?P<user>[a-z_][a-z0-9_.-]{0,31})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):"
                        r"(?P<path>[/~].*)$")


# --- what goes in ------------------------------------------------------------------------------
def journal_copy(path: Path) -> bytes:
    """A consistent copy of the journal (SQLite's backup API), as the bytes of a database file."""
    source = sqlite3.connect(path, timeout=10)
    copy = sqlite3.connect(":memory:")
    try:
        source.backup(copy)
        return copy.serialize()
    finally:
        copy.close()
        source.close()


def recorded_fingerprint(host: Host) -> str | None:
    """The SHA256 fingerprint of the key bak's known_hosts records for a host (what bootstrap should trust)."""
    from bak.run.hosts import known_hosts_path

    known = known_hosts_path(host)
    if not known.is_file():
        return None
    import paramiko

    from bak.run.ssh import fingerprint, known_hosts_entry

    keys = paramiko.HostKeys()
    try:
        keys.load(str(known))
    except (OSError, paramiko.SSHException):
        return None
    found = keys.lookup(known_hosts_entry(host)) or {}
    return fingerprint(next(iter(found.values()))) if found else None


def secret_references(config: Config) -> list[dict]:
    """Every key file and secret the config points to: what bak never copies and a new machine needs.
    `on` is the machine that reads it (a target's pgpass is read where the target runs); `here` says
    whether it is on this machine, when this machine is the one."""
    found = [{"where": f"hosts.{name}.key_file", "ref": host.key_file, "on": LOCAL,
              "here": Path(host.key_file).expanduser().is_file()} for name, host in config.hosts.items() if host.key_file]

    def walk(node, path, on):
        if isinstance(node, dict):
            on = node.get("host", on) if path[:1] == ["targets"] and len(path) == 2 else on
            for key, value in node.items():
                if key == "password" and isinstance(value, dict):
                    kind, ref = next(iter(value.items()))
                    reader = on if kind == "pgpass" else LOCAL  # bak reads the others and hands them over
                    here = None if reader != LOCAL else ref in os.environ if kind == "env" else \
                        Path(ref).expanduser().is_file()
                    found.append({"where": key_path([*path, key]), "ref": f"{kind} {ref}", "on": reader, "here": here})
                else:
                    walk(value, [*path, key], on)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, [*path, index], on)

    walk(config.raw, [], LOCAL)
    return found


def kit_files(config: Config, plan: dict) -> dict[str, bytes]:
    from bak.dr.runbook import markdown, page
    from bak.journal import default_path
    from bak.paths import state_dir

    known = state_dir() / "known_hosts"
    # Never empty (restic stores no empty file): a comment line heads the keys.
    keys = KNOWN_HOSTS_HEAD + (known.read_bytes() if known.is_file() else b"")
    return {KIT_CONFIG: Path(config.source).read_bytes(), KIT_JOURNAL: journal_copy(default_path()),
            KIT_KNOWN_HOSTS: keys, RUNBOOK_MD: markdown(plan).encode(), RUNBOOK_HTML: page(plan).encode()}


def index_of(files: dict[str, bytes]) -> bytes:
    return json.dumps({"written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "written_by": socket.gethostname(), "bak_version": __version__,
                       "files": {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                 for name, data in files.items()}}, indent=1).encode()


def write(store, files: dict[str, bytes]) -> None:
    """Each file atomically, then the index that vouches for them. A restic repository takes the kit as
    one tarball of that folder: every restic call pays the repository's key derivation."""
    index = index_of(files)
    if store.kind == "restic":
        store.write_small(KIT_FOLDER, KIT_TARBALL, tarball({**files, KIT_INDEX: index}))
        return
    for name, data in files.items():
        store.write_small(KIT_FOLDER, name, data)
    store.write_small(KIT_FOLDER, KIT_INDEX, index)


def tarball(files: dict[str, bytes]) -> bytes:
    """The files as `bak/NAME` members of a tar, private to their owner: `tar -x` gives the kit's folder back."""
    import io
    import tarfile
    import time

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(f"{KIT_FOLDER}/{name}")
            member.size, member.mode, member.mtime = len(data), 0o600, int(time.time())
            tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


def refresh(config: Config, outcome: Outcome) -> None:
    """After a create: the kit rewritten on every destination that run wrote a copy to. Never fails the
    create: a problem is a warning. Two runs at once: the second leaves it to the first."""
    from bak.actions import Session
    from bak.dr.plan import KIT_KINDS, build
    from bak.locks import target_lock
    from bak.stores import open_store

    written = sorted({c["store"] for t in outcome.result["targets"] for c in t.get("copies") or [] if c["ok"]
                      and config.destinations[c["store"]].kind in KIT_KINDS})
    if not written or not Path(config.source).is_file():
        return
    try:
        with target_lock(KIT_LOCK, "recovery kit"), Session(config) as session:
            plan, _ = build(session)
            files = kit_files(config, plan)
            for name in written:
                try:
                    write(open_store(config.destinations[name], session.hosts), files)
                except BakError as exc:
                    outcome.warnings.append(f"recovery kit not refreshed on {name}: {exc.message}")
    except LockHeld:
        outcome.warnings.append("recovery kit not refreshed: another bak run is refreshing it")
    except (BakError, OSError, sqlite3.Error) as exc:
        outcome.warnings.append(f"recovery kit not refreshed: {getattr(exc, 'message', None) or exc}")


# --- what comes out: bak bootstrap ---------------------------------------------------------------
def source_store(spec: str, port: int, key: str | None, fingerprint: str | None):
    """The destination to read the kit from: a folder here, or `user@host:/path` over SSH, its host key
    checked against bak's known_hosts (which `fingerprint` adds to, once it matches what the host shows)."""
    match = SSH_SOURCE.match(spec)
    if not match:
        from bak.stores.local import LocalStore

        if not (Path(spec).expanduser() / KIT_FOLDER).is_dir():
            raise BadInput(f"{spec} holds no recovery kit (no {KIT_FOLDER}/ folder)", where="--from",
                           hint="Give the root folder of a destination (the one with proxmox/ postgresql/ rsync/ ...).")
        return LocalStore("from", str(Path(spec).expanduser().resolve())), None
    from bak.paths import state_dir
    from bak.run.ssh import SSHRunner, trust_host
    from bak.stores.remote import RemoteStore

    host = Host(name=match["host"].strip("[]"), address=match["host"].strip("[]"), port=port, user=match["user"],
                key_file=key)
    known = state_dir() / "known_hosts"
    if fingerprint:
        trust_host(host, known, fingerprint, replace=False)
    runner = SSHRunner(host, known)
    try:
        runner.client()
    except HostKeyUnknown as exc:
        runner.close()
        exc.hint = (f"Check that fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then run again "
                    f"with --fingerprint {exc.details['fingerprint']}")
        raise
    except BakError:
        runner.close()
        raise
    return RemoteStore("from", match["path"], runner), runner


def read_kit(store) -> tuple[dict, dict[str, bytes]]:
    """The index and the files bootstrap puts back, each checked against its size and sha256 there."""
    try:
        index = json.loads(store.read_small(KIT_FOLDER, KIT_INDEX))
        files = {name: store.read_small(KIT_FOLDER, name, KIT_FILE_LIMIT) for name in RESTORED if name in index["files"]}
    except FileNotFoundError as exc:
        raise BadInput(f"{store.location(KIT_FOLDER)} holds no complete recovery kit: {exc}", where="--from",
                       hint="Another destination may hold one; `bak create` writes it after each backup.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise VerifyFailed(f"{store.location(KIT_FOLDER, KIT_INDEX)} is not a readable kit index: {exc}",
                           where="--from", code="kit_damaged") from None
    missing = [name for name in RESTORED if name not in files]
    if missing:
        raise VerifyFailed(f"the kit's index {store.location(KIT_FOLDER, KIT_INDEX)} lists no {', '.join(missing)}",
                           where="--from", code="kit_damaged", hint="Bootstrap from another destination.")
    for name, data in files.items():
        expected = index["files"][name]
        if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise VerifyFailed(f"{store.location(KIT_FOLDER, name)} does not match the kit's index (size or sha256): "
                               "it was written by another run, or damaged", where="--from", code="kit_damaged",
                               hint="Bootstrap from another destination, or run bak create there again.")
    return index, files


def _put(path: Path, data: bytes) -> None:
    """Atomically, readable by its owner only, in a private folder."""
    from bak.paths import ensure_private_dir
    from bak.stores.local import LocalStore

    ensure_private_dir(path.parent)
    LocalStore.write_small_at(path.parent, path.name, data)


def _aside(path: Path) -> Path:
    """A name beside `path` that nothing has: a file kept aside is never replaced by the next one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    kept, number = path.with_name(f"{path.name}.before-bootstrap-{stamp}"), 1
    while kept.exists():
        number += 1
        kept = path.with_name(f"{path.name}.before-bootstrap-{stamp}-{number}")
    return kept


def _merged_known_hosts(mine: Path, theirs: bytes) -> tuple[bytes, int]:
    have = mine.read_text().splitlines() if mine.is_file() else []
    new = [line for line in theirs.decode("utf-8", "replace").splitlines()
           if line.strip() and not line.startswith("#") and line not in have]
    return ("\n".join(have + new) + "\n").encode() if have or new else b"", len(new)


def bootstrap(spec: str, *, port: int = 22, key: str | None = None, fingerprint: str | None = None,
              force: bool = False) -> Outcome:
    """bak's config, journal and known_hosts back from a destination's kit into this machine's folders.

    Refused (exit 3) where a config or a journal is already there, unless `force`: then each is kept
    beside, renamed, before the kit's takes its place."""
    from bak import config as bak_config
    from bak.journal import default_path
    from bak.paths import config_file, output_file, state_dir

    config_path, journal_path = config_file(), default_path()
    for path in (config_path, journal_path):  # a device or pipe there is never moved aside: refused even with --force
        output_file(path, str(path), force=True, parents=True)
    present = [p for p in (config_path, journal_path) if p.exists()]
    if present and not force:
        raise Refused(f"{', '.join(map(str, present))} already exist(s): bootstrap never overwrites", where="--from",
                      code="would_overwrite", hint="Run it on a fresh machine, or pass --force (each is kept beside).")
    store, runner = source_store(spec, port, key, fingerprint)
    try:
        index, files = read_kit(store)
        location = store.location(KIT_FOLDER)
    finally:
        if runner is not None:
            runner.close()
    outcome = Outcome({"from": spec, "kit": location, "written_at": index.get("written_at"),
                       "written_by": index.get("written_by"), "config": str(config_path), "journal": str(journal_path),
                       "kept": [], "operations": 0, "known_hosts_added": 0, "secrets": []})
    try:
        for path in present:
            kept = _aside(path)
            os.replace(path, kept)
            outcome.result["kept"].append(str(kept))
        _put(config_path, files[KIT_CONFIG])
        _put(journal_path, files[KIT_JOURNAL])
        known, added = _merged_known_hosts(state_dir() / "known_hosts", files[KIT_KNOWN_HOSTS])
        if added:
            _put(state_dir() / "known_hosts", known)
    except OSError as exc:
        raise WriteFailed(f"could not write {exc.filename}: {exc.strerror}", where=str(exc.filename),
                          hint="Check that folder's rights and free space, then run again.") from None
    outcome.result["known_hosts_added"] = added
    db = sqlite3.connect(journal_path)
    try:
        outcome.result["operations"] = db.execute("SELECT count(*) FROM operations").fetchone()[0]
    finally:
        db.close()
    try:
        loaded = bak_config.load(config_path)
    except BakError as exc:
        outcome.failed(exc)
        return outcome
    outcome.result["secrets"] = secret_references(loaded)
    for secret in outcome.result["secrets"]:
        if secret["here"] is False:
            outcome.warnings.append(f"{secret['where']} points to {secret['ref']}, which is not on this machine: "
                                    "put it back before bak needs it")
    return outcome
