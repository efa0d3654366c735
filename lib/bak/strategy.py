"""3-2-1 analysis, recommendations and storage estimates; the setup wizard's answers -> config.

The seed's tables are the defaults: frequency per kind of data (perimeter table) and retention
per type (VM 7d/4w/6m, pg_dump 7d/4w/12m, Docker volumes 4w/6m, vault unlimited via git).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bak.config import LOCAL, Config, Target, parse_duration
from bak.report import Outcome
from bak.retention import Candidate, is_keep_everything, plan

STANDARD = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2}
SPEC = {
    "vzdump": {"label": "VMs", "interval": "1d", "policy": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
               "cron": "0 2 * * *"},
    "pg_dump": {"label": "PostgreSQL", "interval": "6h", "policy": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12},
                "cron": "0 */6 * * *"},
    "rsync": {"label": "Critical files", "interval": "1d", "policy": STANDARD, "cron": "30 2 * * *"},
    "vault": {"label": "Obsidian vault", "interval": "1d", "policy": None, "cron": None},
    "config": {"label": "Claude Code config", "interval": "1w", "policy": {"keep_weekly": 4, "keep_monthly": 6},
               "cron": "0 3 * * 0"},
    "docker_volume": {"label": "Docker volumes", "interval": "1w", "policy": {"keep_weekly": 4, "keep_monthly": 6},
                      "cron": "0 4 * * 0"},
}
HARD_LINKED = ("rsync", "vault", "config")


def kept_per_year(policy: dict | None, interval: timedelta) -> int:
    """How many backups a policy keeps at steady state, simulated over a year of runs."""
    end = datetime(2026, 12, 31, 23, 0)
    count = int(timedelta(days=365) / interval)
    times = [Candidate(str(i), end - i * interval) for i in range(min(count, 20000))]
    if is_keep_everything(policy):
        return len(times)
    return sum(d.keep for d in plan(times, policy))


def copies_of(config: Config, target: Target) -> dict:
    """The planned copies; local folders are measured (one medium per filesystem), hosts by address."""
    from bak import media

    found = {d: media.medium_of(config, config.destinations[d]) for d in target.destinations}
    rule = media.rule_321(config, target, list(target.destinations), found)
    offsite = list(rule["offsite_destinations"])
    local = [d for d in target.destinations if d not in offsite]
    labels, count = list(rule["media"]), rule["copies"]
    if target.method == "vault":
        remotes = list(target.options.get("remotes") or ["origin"])
        offsite += [f"git:{r}" for r in remotes]
        labels.append("git remote")
        count += len(remotes)
    gaps = [g for g, bad in (("3 copies", count < 3), ("2 media", len(labels) < 2), ("1 offsite", not offsite)) if bad]
    original = f"{target.host}:{target.options.get('path') or target.options.get('source') or target.options.get('database') or target.options.get('vmid') or target.options.get('volume')}"
    return {"original": original, "local": local, "offsite": offsite, "copies": count, "media": sorted(labels),
            "gaps": gaps, "contradicted": rule["contradicted"]}


def analyse(config: Config, sizes: dict[str, dict] | None = None) -> Outcome:
    """sizes (optional, from --measure): {target: {"size": bytes, "changed": bytes}}."""
    sizes = sizes or {}
    outcome = Outcome({"rows": [], "recommendations": [], "estimate_total_bytes": None})
    total, known = 0, True
    for target in config.targets:
        spec = SPEC[target.method]
        copies = copies_of(config, target)
        policy = config.policies.get(target.policy) if target.policy else None
        kept = kept_per_year(policy, target.interval)
        row = {"target": target.name, "data": spec["label"], "method": target.method, **copies,
               "interval": _duration(target.interval), "kept_copies": kept, "ok": not copies["gaps"]}
        measured = sizes.get(target.name)
        if measured:
            size, changed = measured["size"], measured.get("changed", measured["size"])
            per_destination = size + changed * (kept - 1) if target.method in HARD_LINKED else size * kept
            row["estimate_bytes"] = per_destination * len(target.destinations)
            total += row["estimate_bytes"]
        else:
            known = False
        outcome.result["rows"].append(row)
        if copies["gaps"]:
            outcome.problem("rule_321", f"{target.name}: 3-2-1 not met: missing {', '.join(copies['gaps'])} "
                                        f"(copies: {copies['copies']}, media: {', '.join(copies['media'])})"
                            + "".join(f"; {claim}" for claim in copies["contradicted"]), target.name,
                            "Add a destination on another disk and one on another host (an NFS share on another "
                            "machine, a git remote, cloud storage).")
        advice = _advice(target, spec, policy)
        outcome.result["recommendations"] += [{"target": target.name, "advice": a} for a in advice]
    outcome.result["estimate_total_bytes"] = total if known and config.targets else None
    return outcome


def _advice(target: Target, spec: dict, policy: dict | None) -> list[str]:
    advice = []
    if target.interval > parse_duration(spec["interval"]):
        advice.append(f"back up at least every {spec['interval']} (now {_duration(target.interval)}), the usual interval "
                      f"for {spec['label']}")
    if spec["policy"] and is_keep_everything(policy):
        advice.append(f"no retention policy: it keeps everything; a usual one for {spec['label']} keeps "
                      + ", ".join(f"{k.split('_')[1]} {v}" for k, v in spec["policy"].items()))
    if target.method == "vault" and not target.options.get("remotes"):
        advice.append("the vault's offsite copy is its git remote: configure one")
    return advice


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- setup wizard: answers -> config -------------------------------------------------------------
def config_from_answers(answers: dict) -> dict:
    """A full config from the wizard's answers, with the spec's frequencies, policies and schedules."""
    copies = answers.get("copies") or sorted(answers.get("destinations") or {})
    config = {"version": 1, "hosts": answers.get("hosts") or {}, "destinations": answers.get("destinations") or {},
              "policies": {}, "targets": [], "schedules": []}

    def add(method: str, name: str, host: str, options: dict, destinations: list[str] | None = None) -> None:
        spec = SPEC[method]
        target = {"name": name, "method": method, "host": host, "destinations": destinations or list(copies),
                  "interval": spec["interval"], method: options}
        if spec["policy"]:
            policy = {"vzdump": "vm", "pg_dump": "pg", "docker_volume": "docker", "config": "weekly", "rsync": "standard"}[method]
            config["policies"][policy] = dict(spec["policy"])
            target["policy"] = policy
        config["targets"].append(target)

    pve = answers.get("pve") or {}
    for vmid in pve.get("vms", []):
        storage_dest = pve.get("destination")
        add("vzdump", f"vm-{vmid}", pve["host"], {"vmid": vmid, "storage": pve.get("storage", "local")},
            ([storage_dest] if storage_dest else []) + [c for c in copies if c != storage_dest])
    for db in answers.get("databases", []):
        options = {k: v for k, v in db.items() if k not in ("host", "name")}
        options.setdefault("database", db["name"])
        add("pg_dump", f"pg-{db['name']}", db.get("host", LOCAL), options)
    for folder in answers.get("folders", []):
        add("rsync", folder["name"], folder.get("host", LOCAL), {"source": folder["source"], "excludes": ["*.tmp", ".cache"]})
    if answers.get("vault"):
        vault = answers["vault"]
        add("vault", "vault", vault.get("host", LOCAL), {"path": vault["path"], "remotes": vault.get("remotes", ["origin"])})
    if answers.get("claude_config"):
        add("config", "claude-config", LOCAL, {"source": answers["claude_config"]})
    for vol in answers.get("docker_volumes", []):
        add("docker_volume", f"docker-{vol['container']}", vol.get("host", LOCAL),
            {"container": vol["container"], "volume": vol["volume"], "stop_containers": True})
    backend = answers.get("scheduler", "cron")
    by_method: dict[str, list[str]] = {}
    for target in config["targets"]:
        by_method.setdefault(target["method"], []).append(target["name"])
    for method, names in by_method.items():
        if method == "vault":
            config["schedules"].append({"name": "vault-on-commit", "targets": names, "on_commit": True})
        else:
            config["schedules"].append({"name": f"{method.replace('_', '-')}", "targets": names,
                                        "cron": SPEC[method]["cron"], "backend": backend})
    for key in ("hosts", "policies", "schedules"):
        if not config[key]:
            del config[key]
    return config


def measure(config: Config) -> dict[str, dict]:
    """Size and change of each target's newest backup, from the first destination that has one."""
    from bak import catalog
    from bak.errors import BakError
    from bak.methods.rsync import read_manifest
    from bak.run import Hosts
    from bak.stores import open_store

    sizes: dict[str, dict] = {}
    with Hosts(config) as hosts:
        for target in config.targets:
            for dest in target.destinations:
                try:
                    store = open_store(config.destinations[dest], hosts)
                    backups = catalog.scan(store, target).backups
                except BakError:
                    continue
                if not backups:
                    continue
                if target.method in HARD_LINKED:
                    newest = read_manifest(store, backups[0].folder, backups[0].name)
                    before = read_manifest(store, backups[1].folder, backups[1].name) if len(backups) > 1 else None
                    if newest is None:
                        continue
                    files, key = newest.files(), newest.algorithm
                    earlier = before.files() if before and before.algorithm == key else {}
                    size = sum(r.get("size", 0) for r in files.values())
                    changed = sum(r.get("size", 0) for p, r in files.items() if earlier.get(p, {}).get(key) != r.get(key))
                else:
                    size = backups[0].size
                    changed = size
                sizes[target.name] = {"size": size, "changed": changed}
                break
    return sizes
