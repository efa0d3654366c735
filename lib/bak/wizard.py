"""The setup wizard: answers (a file, or prompts) -> a validated config, never overwriting silently."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bak import config as bak_config
from bak.errors import BadInput, ConfigError, Refused
from bak.paths import ensure_private_dir, output_file
from bak.report import Outcome
from bak.strategy import config_from_answers


def write_config(answers: Any, path: Path, force: bool) -> Outcome:
    problems = bak_config.validate_answers(answers)
    if problems:
        raise ConfigError(problems, source="wizard answers")
    data = config_from_answers(answers)
    if not data["targets"]:
        raise BadInput("the answers name nothing to back up: no folder, database, VM, vault, config or volume",
                       where="answers", hint="Add at least one of: folders, databases, pve.vms, vault, claude_config, "
                                              "docker_volumes.")
    problems = bak_config.validate(data)
    if problems:
        raise ConfigError(problems, source="wizard answers")
    previous = None
    path = Path(os.path.abspath(path.expanduser()))
    try:
        exists = output_file(path, "--output", force=force, parents=True)
    except Refused:
        raise Refused(f"{path} exists; the wizard never overwrites a config", where=str(path), code="would_overwrite",
                      hint="Pass --output for a new file, or --force (the old config is kept beside it).") from None
    if exists:
        previous = path.with_name(f"{path.name}.bak-{datetime.now():%Y%m%d-%H%M%S}")
        os.replace(path, previous)
    ensure_private_dir(path.parent)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("# Written by `bak wizard setup`; see references/config.md for every key.\n"
                       + yaml.safe_dump(data, sort_keys=False))
    partial.chmod(0o600)
    os.replace(partial, path)
    return Outcome({"path": str(path), "previous": str(previous) if previous else None,
                    "targets": [t["name"] for t in data["targets"]], "schedules": [s["name"] for s in data.get("schedules", [])]})


def prompt_answers() -> dict:
    """The same answers, asked one by one in a terminal."""
    import click

    answers: dict = {"destinations": {}, "hosts": {}}
    local = click.prompt("Folder for local backups on this machine", default=str(Path.home() / "Backups" / "bak"))
    answers["destinations"]["local"] = {"kind": "local", "path": local, "medium": "ssd"}
    nfs_host = click.prompt("SSH address of the NFS/backup server (blank: none)", default="", show_default=False)
    if nfs_host:
        answers["hosts"]["store"] = {"address": nfs_host, "user": click.prompt("  SSH user", default="root"),
                                     "key_file": click.prompt("  SSH key", default="~/.ssh/id_ed25519")}
        answers["destinations"]["nfs"] = {"kind": "ssh", "host": "store", "medium": "nfs", "offsite": True,
                                          "path": click.prompt("  backup folder there", default="/mnt/nfs/backups")}
    pve = click.prompt("SSH address of the Proxmox host (blank: none)", default="", show_default=False)
    if pve:
        answers["hosts"]["pve"] = {"address": pve, "user": "root", "key_file": "~/.ssh/id_ed25519"}
        answers["destinations"]["pve-local"] = {"kind": "proxmox", "host": "pve", "storage": "local", "medium": "zfs"}
        vms = click.prompt("  VMIDs to back up (comma-separated)", default="100")
        answers["pve"] = {"host": "pve", "storage": "local", "destination": "pve-local",
                          "vms": [int(v) for v in vms.split(",") if v.strip()]}
    database = click.prompt("PostgreSQL database to dump (blank: none)", default="", show_default=False)
    if database:
        answers["databases"] = [{"name": database, "host": "store" if nfs_host else "local",
                                 "user": click.prompt("  role", default="backup"), "password": {"pgpass": "~/.pgpass"}}]
    vault = click.prompt("Obsidian vault folder (blank: none)", default="", show_default=False)
    if vault:
        answers["vault"] = {"path": vault, "remotes": ["origin"]}
    if click.confirm("Back up the Claude Code config (~/.claude)?", default=True):
        answers["claude_config"] = "~/.claude"
    if not answers["hosts"]:
        del answers["hosts"]
    return answers
