"""The Obsidian vault: commit pending changes, push to every remote (never forced), then snapshot."""

from __future__ import annotations

from bak.catalog import Backup
from bak.config import Target
from bak.errors import CommandFailed, VerifyFailed
from bak.journal import Operation
from bak.methods.base import Context
from bak.methods.rsync import RsyncSnapshot, source_path
from bak.stores import Store

IDENTITY = ["-c", "user.name=bak", "-c", "user.email=bak@localhost"]


def git(path: str, *args: str) -> list[str]:
    return ["git", "-C", path, *args]


class Vault(RsyncSnapshot):
    name = "vault"

    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        runner = ctx.hosts.runner(target.host)
        path = source_path(target)
        options = target.options
        identity = [] if runner.run(git(path, "config", "user.email"), check=False).returncode == 0 else IDENTITY
        pending = runner.run(git(path, "status", "--porcelain")).stdout_text.strip()
        committed = False
        if pending:
            runner.run(git(path, "add", "-A"))
            message = options.get("commit_message") or f"bak: auto-commit {ctx.now:%Y-%m-%d %H:%M:%S}"
            runner.run(["git", *identity, "-C", path, "commit", "-q", "-m", message])
            committed = True
        branch = options.get("branch") or runner.run(git(path, "rev-parse", "--abbrev-ref", "HEAD")).stdout_text.strip()
        head = runner.run(git(path, "rev-parse", "HEAD")).stdout_text.strip()
        pushes = []
        for remote in options.get("remotes") or ["origin"]:
            out = runner.run(git(path, "push", "--porcelain", remote, f"{branch}:{branch}"), check=False)
            text = out.stdout_text + out.stderr_text
            if out.returncode == 0:
                pushes.append({"remote": remote, "ok": True})
            else:
                diverged = "[rejected]" in text or "non-fast-forward" in text or "fetch first" in text
                pushes.append({"remote": remote, "ok": False, "diverged": diverged,
                               "error": ("remote has diverged; not force-pushed: merge or rebase by hand"
                                         if diverged else text.strip().splitlines()[-1] if text.strip() else "push failed")})
        result = super().create(ctx, target, stores, op)
        result["git"] = {"committed": committed, "branch": branch, "head": head, "pushes": pushes}
        result["problems"] = [{"code": "git_diverged" if p.get("diverged") else "git_push_failed",
                               "message": f"{target.name}: push to {p['remote']} failed: {p['error']}",
                               "where": p["remote"], "hint": "Fetch and merge (or rebase) in the vault, then run again."}
                              for p in pushes if not p["ok"]]
        if result["problems"]:
            op.status = "partial"
        return result

    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        result = super().verify(ctx, target, store, backup)
        runner = ctx.hosts.runner(target.host)
        path = source_path(target)
        problems = []
        fsck = runner.run(git(path, "fsck", "--no-progress"), check=False)
        if fsck.returncode != 0:
            problems.append(f"git fsck: {fsck.stderr_text.strip().splitlines()[-1] if fsck.stderr_text.strip() else 'failed'}")
        head = runner.run(git(path, "rev-parse", "HEAD")).stdout_text.strip()
        branch = target.options.get("branch") or runner.run(git(path, "rev-parse", "--abbrev-ref", "HEAD")).stdout_text.strip()
        remotes = {}
        for remote in target.options.get("remotes") or ["origin"]:
            try:
                line = runner.run(git(path, "ls-remote", remote, f"refs/heads/{branch}")).stdout_text.split()
            except CommandFailed as exc:
                remotes[remote] = "unreachable"
                problems.append(f"remote {remote}: {exc.message}")
                continue
            remotes[remote] = "ok" if line and line[0] == head else "behind or diverged"
            if remotes[remote] != "ok":
                problems.append(f"remote {remote} HEAD {line[0][:12] if line else '(none)'} != local {head[:12]}")
        result["git"] = {"fsck": "ok" if fsck.returncode == 0 else "failed", "head": head, "remotes": remotes}
        if problems:
            raise VerifyFailed(f"vault {target.name}: " + "; ".join(problems), where=target.name,
                               details={"result": {**result, "checksum": result["checksum"], "format": "failed"}})
        result["format"] = "ok"
        return result
