"""Folder snapshots (rsync, config, vault) in a restic repository.

Up: `restic backup` of the finished snapshot folder and its manifest, read where a local destination
holds it; a snapshot held only on an SSH destination is first staged on this machine (rsync, bak's
ssh), and one held nowhere else is made in a staging folder like on any destination. Either way it is
checked against its manifest's listing before restic reads it (once), and the staging folder is
removed. restic deduplicates what the hard-linked local snapshots share.

Down: `restic restore` into a private scratch folder on this machine, laid out as a local destination,
so verify, restore and drill run the rsync method's own checks and rules on it unchanged.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bak import manifest, naming
from bak.catalog import Backup, Listing
from bak.config import LOCAL, Target
from bak.errors import BakError, VerifyFailed
from bak.methods.base import Context, clear_leftovers
from bak.report import human_size
from bak.run.local import LocalRunner
from bak.stores import Store
from bak.stores.local import LocalStore

MANIFEST = naming.MANIFEST_SUFFIX


@contextmanager
def _scratch(prefix: str) -> Iterator[Path]:
    """A private folder in the temp folder, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def local_tree(ctx: Context, store: Store, folder: str, name: str) -> Iterator[tuple[str, str]]:
    """(snapshot folder, manifest file) as paths on this machine: in place on a local destination,
    else staged from the SSH destination that holds them."""
    if store.kind == "local":
        yield store.path_of(folder, name), store.path_of(folder, name + MANIFEST)
        return
    from bak.methods.rsync import RSYNC_ENV, raise_for_exit, rsync_argv, transfer

    with _scratch("bak-stage-") as scratch:
        root = scratch / name
        runner, src, dst, ssh, _ = transfer(ctx, store.host_name, store.path_of(folder, name) + "/", LOCAL, f"{root}/")
        out = runner.run(rsync_argv(src, dst, ssh=ssh), check=False, env=RSYNC_ENV)
        raise_for_exit(out.returncode, out.stderr_text, store.name, ctx, name)
        (scratch / (name + MANIFEST)).write_bytes(store.read_small(folder, name + MANIFEST, 1 << 34))
        yield str(root), str(scratch / (name + MANIFEST))


def upload(ctx: Context, restic: Store, source: Store, folder: str, name: str, *, when: float | None = None,
           protected: bool = False) -> str:
    """A finished snapshot on `source` into the repository as one snapshot; returns restic's id."""
    from bak.methods.rsync import read_manifest, tree_items

    expected = read_manifest(source, folder, name)
    if expected is None:
        raise VerifyFailed(f"{name} on {source.name} has no readable manifest: it is not copied", where=f"{source.name}:{name}")
    with local_tree(ctx, source, folder, name) as (root, manifest_file):
        algorithm = expected.algorithm if expected.version >= 2 else "md5"
        found = tree_items(LocalRunner(), root, algorithm, checksums=False)
        diff = manifest.differences(expected, found, owners=False, checksums=False)
        if any(diff.values()):
            first = next(f"{k}: {v[0]}" for k, v in diff.items() if v)
            raise VerifyFailed(f"{name} on {source.name} does not match its manifest ({first}); it is not copied",
                               where=f"{source.name}:{name}", hint="Verify it (bak verify --all-backups).")
        size = int(expected.head.get("size") or sum(int(r.get("size") or 0) for r in expected.files().values()))
        label = f"{name} from {source.name} to {restic.name}"
        ctx.progress(label)

        def progress(status: dict) -> None:
            done, total = status.get("bytes_done"), status.get("total_bytes")
            if isinstance(done, int) and isinstance(total, int) and total:
                ctx.progress(f"{label}: {human_size(done)} of {human_size(total)} read")

        return restic.backup_tree(folder, name, root, manifest_file, size, when=when, protected=protected,
                                  progress=progress)


def copy_tree(method, ctx: Context, target: Target, restic: Store, folder: str, name: str, *, source_host: str,
              source: str, relative: bool = False, protected: bool = False) -> dict:
    """A snapshot of `source` made in a staging folder on this machine, then uploaded (no other copy to read)."""
    with _scratch("bak-stage-") as scratch:
        staging = LocalStore(restic.name, str(scratch))
        copy = method._copy_tree(ctx, target, staging, folder, name, source_host=source_host, source=source,
                                 previous=None, relative=relative)
        copy["location"] = restic.location(folder, name)
        if copy["ok"]:
            try:
                copy["snapshot"] = upload(ctx, restic, staging, folder, name, protected=protected)
            except BakError as exc:
                copy.update(ok=False, error=exc.to_error())
        return copy


def copy_for_create(method, ctx: Context, target: Target, restic: Store, listing: Listing, name: str,
                    made: list[tuple[Store, dict]]) -> dict:
    """The repository's copy of the snapshot just made: from a destination that holds it finished (a local
    one first: nothing to stage), else made for the repository alone."""
    from bak.catalog import folder_of

    folder = folder_of(target)
    copy = {"store": restic.name, "location": restic.location(folder, name), "ok": False, "error": None, "name": name}
    try:
        clear_leftovers(ctx, restic, listing)
        held = sorted((store for store, c in made if c["ok"]), key=lambda s: s.kind != "local")
        if held:
            copy.update(ok=True, snapshot=upload(ctx, restic, held[0], folder, name), **{"from": held[0].name})
            copy.update({k: v for k, v in next(c for s, c in made if s is held[0]).items()
                         if k in ("files", "size", "added_bytes")})
        else:
            copy.update(copy_tree(method, ctx, target, restic, folder, name, source_host=target.host,
                                  source=method.source(target).rstrip("/") + "/"))
    except BakError as exc:
        copy.update(ok=False, error=exc.to_error())
    return copy


SCRATCH_PREFIX = "bak-restic-"


def remove_scratch(path: str) -> bool:
    """A scratch folder a killed restore or drill from a repository left in this machine's temp folder."""
    place = Path(path)
    if place.parent != Path(tempfile.gettempdir()) or not place.name.startswith(SCRATCH_PREFIX) or not place.is_dir():
        return False
    shutil.rmtree(place, ignore_errors=True)
    return True


@contextmanager
def _journaled_scratch(ctx: Context) -> Iterator[Path]:
    """A private scratch folder whose name is journaled before it exists (ctx.stage): a restore or drill killed
    at any point leaves nothing the next one does not know of."""
    path = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    ctx.stage(f"local:{path}")
    try:
        path.mkdir(mode=0o700)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
    finally:
        ctx.unstage(f"local:{path}")


@contextmanager
def restored(store: Store, backup: Backup, ctx: Context | None = None) -> Iterator[LocalStore]:
    """The folder snapshot restored from the repository into a scratch folder, as a local destination
    holding just that backup and its manifest (removed afterwards; journaled while it exists, see ctx.stage)."""
    with (_journaled_scratch(ctx) if ctx is not None else _scratch(SCRATCH_PREFIX)) as scratch:
        artifact = store.find(backup.folder, backup.name)
        landed = Path(store.restore_tree(artifact, str(scratch / "restore")))
        place = scratch / "store" / backup.folder
        place.mkdir(parents=True)
        os.rename(landed, place / backup.name)
        (place / (backup.name + MANIFEST)).write_bytes(store.read_small(backup.folder, backup.name + MANIFEST, 1 << 34))
        yield LocalStore(store.name, str(scratch / "store"))


def verify(method, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
    """Every entry restored and compared with the manifest: a folder snapshot's full read."""
    with restored(store, backup) as view:
        return method.verify(ctx, target, view, backup)


def restore(method, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None, force: bool,
            options: dict) -> dict:
    """As from a folder destination; a safety copy of what --force replaces goes into the repository."""
    with restored(store, backup, ctx) as view:
        return method.restore(ctx, target, view, backup, into=into, force=force, options={**options, "safety_store": store})
