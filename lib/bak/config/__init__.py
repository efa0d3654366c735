"""Config: YAML -> JSON Schema validation (every error, with its key path) -> typed objects."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from bak.errors import BadInput, ConfigError
from bak.naming import FOLDERS, SAFE_NAME, SAFETY_FOLDER
from bak.naming import parse as parse_name

LOCAL = "local"
_HERE = Path(__file__).parent

RESTIC_REPOSITORY = '^((~|/)[^\\u0000\\n]*|sftp:([A-Za-z0-9._-]+@[A-Za-z0-9.-]+:)?[^\\u0000\\n@:][^\\u0000\\n]*|rest:https?://[^\\u0000\\n\\s@/]+(/[^\\u0000\\n\\s]*)?|s3:https?://[^\\u0000\\n\\s@/]+/[^\\u0000\\n\\s]+)$'

_PATTERN_MEANING = {
    SAFE_NAME: "a plain name: letters, digits, '_', '.', '-', starting with a letter or digit, at most 64 characters",
    r"^[1-9][0-9]{0,5}[mhdw]$": "a duration like 30m, 6h, 1d or 1w (at most 6 digits)",
    r"^(~|/|[A-Za-z]:[\\/])[^\u0000\n]*$": "an absolute path (or one starting with ~)",
    RESTIC_REPOSITORY: "a restic repository: a path, sftp:PATH, rest:http(s)://HOST:PORT/ or s3:http(s)://HOST/BUCKET, "
                       "without credentials",
    r"^1/[1-9][0-9]{0,3}$": "1/N, the part of the data each check reads (1/30, 1/1)",
    r"^https?://\S+$": "an http(s) URL without spaces",
    r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$": "an Apprise URL (SERVICE://...) without spaces",
}


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads((_HERE / "schema.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def answers_schema() -> dict:
    return json.loads((_HERE / "answers.schema.json").read_text(encoding="utf-8"))


def validate_answers(data: Any) -> list[dict]:
    """The wizard's answers file, checked like a config: every problem with its key path."""
    if not isinstance(data, dict):
        return [{"where": "(top)", "message": "the answers must be a mapping (hosts, destinations, folders, ...)"}]
    problems = _non_text_keys(data)
    if not problems:
        validator = _validator_class()(answers_schema())
        problems = [d for error in validator.iter_errors(data) for d in _describe(error, data)]
    unique = {(p["where"], p["message"]): {**p, "message": _bounded(p["message"])} for p in problems}
    return sorted(unique.values(), key=lambda p: (p["where"], p["message"]))


def example_text() -> str:
    return (_HERE / "example.yaml").read_text(encoding="utf-8")


DURATION = re.compile(r"[1-9][0-9]{0,5}[mhdw]")  # at most 999999 units: far beyond any interval, far from overflow


def parse_duration(text: str) -> timedelta:
    number, unit = int(text[:-1]), text[-1]
    return {"m": timedelta(minutes=number), "h": timedelta(hours=number),
            "d": timedelta(days=number), "w": timedelta(weeks=number)}[unit]


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = 10
    keepalive: int = 30
    vmid: int | None = None  # the Proxmox guest this host is

    @property
    def is_local(self) -> bool:
        return self.name == LOCAL


LOCAL_HOST = Host(name=LOCAL, address="localhost")


@dataclass(frozen=True)
class Destination:
    name: str
    kind: str
    host: str = LOCAL
    path: str | None = None
    storage: str | None = None
    node: str | None = None
    repository: str | None = None
    password: dict | None = None
    aws_access_key_id: dict | None = None
    aws_secret_access_key: dict | None = None
    check_subset: str = "1/30"
    limit_upload_kib: int | None = None
    retry_seconds: int = 300
    medium: str | None = None
    offsite: bool = False
    warn_percent: int = 80


@dataclass(frozen=True)
class Target:
    name: str
    method: str
    host: str
    destinations: tuple[str, ...]
    policy: str | None
    interval: timedelta
    timeout: timedelta
    enabled: bool
    options: dict = field(default_factory=dict, hash=False, compare=False)
    description: str | None = None
    after: tuple[str, ...] = ()  # targets to recover before this one
    # Whether backups named in the shared kind folder by older versions (no per-target folder)
    # are this target's: only when no other target on one of its destinations makes the same names.
    owns_flat_names: bool = True


@dataclass(frozen=True)
class Schedule:
    name: str
    targets: tuple[str, ...]
    cron: str | None
    on_commit: bool
    backend: str
    ping_url: str | dict | None  # the URL, or a secret reference to it


@dataclass
class Config:
    source: str
    hosts: dict[str, Host]
    destinations: dict[str, Destination]
    policies: dict[str, dict]
    targets: list[Target]
    schedules: list[Schedule]
    notify: dict
    dr: dict
    raw: dict
    state_dir: Path | None = None  # the `state_dir` key, resolved from the config file's folder

    def host(self, name: str) -> Host:
        return LOCAL_HOST if name == LOCAL else self.hosts[name]

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise BadInput(f"no target named {name!r}", where="--target",
                       hint="Known targets: " + (", ".join(t.name for t in self.targets) or "none"))

    def select(self, names: tuple[str, ...] | list[str] | None) -> list[Target]:
        """Named targets, or every enabled one when no name is given."""
        if names:
            return [self.target(n) for n in names]
        return [t for t in self.targets if t.enabled]


def load(path: Path) -> Config:
    """Read, validate and type a config file; raises ConfigError listing every problem."""
    from bak.config import yamlfile

    return from_data(yamlfile.load(path), source=str(path))


def from_data(data: Any, source: str = "<config>") -> Config:
    problems = validate(data)
    if problems:
        raise ConfigError(problems, source=source)
    data = fill_defaults(copy.deepcopy(data), schema())
    from bak.secrets import declare_env

    declare_env(secret_env_refs(data))
    return _build(data, source)


def secret_env_refs(node: Any) -> set[str]:
    """Every `{env: VAR}` secret reference in the config (the only place the schema allows that shape)."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return {node["env"]}
        return {name for value in node.values() for name in secret_env_refs(value)}
    if isinstance(node, list):
        return {name for value in node for name in secret_env_refs(value)}
    return set()


def _whole_string_pattern(validator, pattern: str, instance: Any, node: dict):
    """JSON Schema's `pattern` with ECMA-262's `$`: the end of the text. Python's `$` also matches before a
    final newline, which let `grafana\n` pass as a plain name."""
    from jsonschema import ValidationError

    if isinstance(instance, str) and not re.search(re.sub(r"(?<!\\)\$$", r"\\Z", pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=1)
def _validator_class():
    from jsonschema import Draft202012Validator, validators

    return validators.extend(Draft202012Validator, {"pattern": _whole_string_pattern})


def validate(data: Any) -> list[dict]:
    """Every problem at once: schema errors first, then names that point nowhere."""
    if not isinstance(data, dict):
        return [{"where": "(top)", "message": "the config must be a mapping with at least `version: 1`"}]
    problems = _non_text_keys(data)
    if problems:
        return problems  # the schema speaks of text keys only
    validator = _validator_class()(schema())
    for error in validator.iter_errors(data):
        problems.extend(_describe(error, data))
    if not problems:
        problems.extend(_cross_references(data))
    unique = {(p["where"], p["message"]): {**p, "message": _bounded(p["message"])} for p in problems}
    return sorted(unique.values(), key=lambda p: (p["where"], p["message"]))


def _bounded(text: str, limit: int = 300) -> str:
    """A message echoes a value: never a huge one."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _non_text_keys(data: Any) -> list[dict]:
    """`hosts: {1: ...}` or `policies: {true: ...}`: YAML makes numbers and booleans of such keys."""
    problems, stack = [], [(data, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    problems.append({"where": key_path([*path, repr(key)]),
                                     "message": f"key {_bounded(repr(key), 60)} is not text",
                                     "hint": "Quote it in the YAML (e.g. '1': ... or 'true': ...)."})
                else:
                    stack.append((value, [*path, key]))
        elif isinstance(node, list):
            stack.extend((value, [*path, index]) for index, value in enumerate(node))
    return sorted(problems, key=lambda p: p["where"])


def key_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def _is_secret_ref(node) -> bool:
    """A `{file|env: ...}` secret reference, alone or as one branch of a choice (a URL or a reference to one)."""
    if not isinstance(node, dict):
        return False
    return "env" in node.get("properties", {}) or any(_is_secret_ref(b) for b in node.get("anyOf", []) + node.get("oneOf", []))


@lru_cache(maxsize=1)
def secret_keys() -> frozenset[str]:
    """Keys whose value is a secret or may carry one (passwords, token URLs): the schema marks them by
    allowing a secret reference there. Their values are never echoed in an error."""
    found, stack = set(), [schema(), answers_schema()]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if _is_secret_ref(sub) or isinstance(sub, dict) and _is_secret_ref(sub.get("items")):
                    found.add(key)
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


def _holds_secret(path) -> bool:
    return any(isinstance(part, str) and part in secret_keys() for part in path)


def _secret_problem(error, where: str) -> dict:
    """What is wrong with a secret-typed value, without the value."""
    if error.validator == "type" and error.validator_value == "object" and isinstance(error.instance, str):
        message = "a secret is never written in the config itself: give a reference, {file: PATH} or {env: VAR}"
    elif error.validator == "pattern":
        message = "the value is not " + _PATTERN_MEANING.get(error.validator_value, "in the expected form")
    elif error.validator in ("minProperties", "maxProperties"):
        message = "a secret reference has exactly one key, file or env"
    else:
        message = f"the value is not valid here ({error.validator})"
    return {"where": where, "message": message + " (the value is not shown: it may hold a secret)",
            "hint": "Point to the secret instead: {file: ~/.config/bak/NAME} (mode 0600) or {env: VARIABLE}."}


def _describe(error, data: dict) -> list[dict]:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})), key=repr)
        known = ", ".join(sorted(error.schema.get("properties", {})))
        return [{"where": key_path([*error.absolute_path, key]), "message": f"unknown key {key!r}",
                 "hint": f"Allowed here: {known}"} for key in extra]
    if error.schema is False:
        # jsonschema leaves the key out of the path of a `false` sub-schema: find it in the parent.
        parent = _node(data, error.absolute_path)
        keys = [k for k, v in parent.items() if v is error.instance] if isinstance(parent, dict) else []
        method = parent.get("method") if isinstance(parent, dict) else None
        return [{"where": key_path([*error.absolute_path, k]),
                 "message": f"options block {k!r} does not belong to method {method!r}"} for k in keys]
    if error.validator == "not" and error.validator_value == {"const": LOCAL}:
        return [{"where": key_path([*error.absolute_path, LOCAL]), "message": "the host name 'local' is reserved for this machine"}]
    if error.validator == "pattern" and _holds_secret(error.absolute_path):
        return [_secret_problem(error, where)]
    if error.validator == "pattern":
        meaning = _PATTERN_MEANING.get(error.validator_value, f"text matching {error.validator_value}")
        # A repository written with credentials in it is not echoed back: they would end up in the output.
        shown = "the repository" if error.validator_value == RESTIC_REPOSITORY else _bounded(repr(error.instance), 80)
        return [{"where": where, "message": f"{shown} is not {meaning}"}]
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        name = missing[0] if missing else error.message
        return [{"where": key_path([*error.absolute_path, name]), "message": f"required key {name!r} is missing"}]
    if error.validator == "anyOf" and error.context and all(sub.validator == "required" for sub in error.context):
        names = [sub.validator_value[0] for sub in error.context]
        return [{"where": where, "message": "needs one of the keys: " + ", ".join(names)}]
    if error.validator in ("allOf", "anyOf", "oneOf") and error.context:
        context = error.context
        if _holds_secret(error.absolute_path):  # a URL or a reference to one: say what is wrong with the kind given
            context = [sub for sub in context if sub.validator != "type"] or context
        return [d for sub in context for d in _describe(sub, data)] or [
            _secret_problem(error, where) if _holds_secret(error.absolute_path) else {"where": where, "message": error.message}]
    if _holds_secret(error.absolute_path):
        return [_secret_problem(error, where)]
    return [{"where": where, "message": error.message}]


def _node(data: Any, path) -> Any:
    for part in path:
        data = data[part]
    return data


def _cross_references(data: dict) -> list[dict]:
    problems = []
    hosts = set(data.get("hosts") or {}) | {LOCAL}
    dests = data.get("destinations") or {}
    policies = set(data.get("policies") or {})

    def missing(where, kind, name, known):
        problems.append({"where": where, "message": f"unknown {kind} {name!r}",
                         "hint": f"Defined: {', '.join(sorted(known)) or 'none'}"})

    for name, dest in dests.items():
        if "host" in dest and dest["host"] not in hosts:
            missing(f"destinations.{name}.host", "host", dest["host"], hosts)
        elif dest.get("kind") == "restic" and str(dest.get("repository", "")).startswith("sftp:"):
            problems.extend(_sftp_login(name, dest, data.get("hosts") or {}))
    seen: dict[str, int] = {}
    for i, target in enumerate(data.get("targets") or []):
        tname = target["name"]
        if tname in seen:
            problems.append({"where": f"targets[{i}].name", "message": f"duplicate target name {tname!r} (also targets[{seen[tname]}])"})
        seen.setdefault(tname, i)
        if parse_name(tname) or tname == SAFETY_FOLDER:
            problems.append({"where": f"targets[{i}].name",
                             "message": f"target name {tname!r} could be mistaken for a backup name",
                             "hint": "Pick a name that does not look like a backup file or folder (e.g. no date in it)."})
        if target.get("host", LOCAL) not in hosts:
            missing(f"targets[{i}].host", "host", target["host"], hosts)
        for j, dname in enumerate(target["destinations"]):
            if dname not in dests:
                missing(f"targets[{i}].destinations[{j}]", "destination", dname, dests)
        if "policy" in target and target["policy"] not in policies:
            missing(f"targets[{i}].policy", "policy", target["policy"], policies)
    problems.extend(_same_guest_same_storage(data.get("targets") or [], dests))
    problems.extend(_recovery_dependencies(data.get("targets") or []))
    for i, sched in enumerate(data.get("schedules") or []):
        for j, tname in enumerate(sched["targets"]):
            if tname not in seen:
                missing(f"schedules[{i}].targets[{j}]", "target", tname, seen)
    return problems


def _sftp_login(name: str, dest: dict, hosts: dict) -> list[dict]:
    """sftp:USER@ADDRESS:PATH must name the host's own user and address: bak connects with the host's settings."""
    from bak.stores.resticcmd import sftp_parts

    login = sftp_parts(dest["repository"])[0]
    host = hosts.get(dest["host"]) or {}
    expected = f"{host.get('user', 'root')}@{host.get('address')}"
    if dest["host"] == LOCAL:
        return [{"where": f"destinations.{name}.host", "message": "an sftp: repository is on an SSH host, not on 'local'",
                 "hint": "Name the SSH host (a key of hosts) that serves it."}]
    if login and login != expected:
        return [{"where": f"destinations.{name}.repository",
                 "message": f"{login} is not host {dest['host']!r} ({expected})",
                 "hint": f"Write sftp:PATH: bak connects as hosts.{dest['host']} says."}]
    return []


def _recovery_dependencies(targets: list[dict]) -> list[dict]:
    """`after:` names targets of this config, never itself, and never closes a cycle (no order could honour it)."""
    from bak.dr.order import find_cycle

    problems = []
    names = {t["name"] for t in targets}
    for i, target in enumerate(targets):
        for j, name in enumerate(target.get("after") or []):
            if name == target["name"]:
                problems.append({"where": f"targets[{i}].after[{j}]", "message": f"target {name!r} cannot come after itself"})
            elif name not in names:
                problems.append({"where": f"targets[{i}].after[{j}]", "message": f"unknown target {name!r}",
                                 "hint": f"Defined: {', '.join(sorted(names)) or 'none'}"})
    edges = {t["name"]: [n for n in t.get("after") or [] if n in names and n != t["name"]] for t in targets}
    cycle = find_cycle(edges)
    if cycle:
        index = next(i for i, t in enumerate(targets) if t["name"] == cycle[0])
        problems.append({"where": f"targets[{index}].after",
                         "message": "recovery order has a cycle: " + " -> ".join([*cycle, cycle[0]]) + " (each after the next)",
                         "hint": "Remove one of these `after:` entries: a cycle leaves no target to recover first."})
    return problems


def flat_name_key(target: dict) -> tuple[str, str, str]:
    """(kind folder, file prefix, key): two targets with the same triple make the same file names."""
    method, options = target["method"], target.get(target["method"]) or {}
    if method == "vzdump":
        return FOLDERS[method], "vzdump", str(options.get("vmid"))
    if method == "pg_dump":
        return FOLDERS[method], "pg", str(options.get("database"))
    if method == "docker_volume":
        return FOLDERS[method], "docker-vol", f"{options.get('container')}-{options.get('volume')}"
    return FOLDERS[method], "rsync", target["name"]


def _shared_flat_names(targets: list[dict]) -> set[str]:
    """Targets whose flat file names another target on a common destination makes too."""
    claims: dict[tuple, set[str]] = {}
    for target in targets:
        for dest in target["destinations"]:
            claims.setdefault((dest, *flat_name_key(target)), set()).add(target["name"])
    return {name for names in claims.values() if len(names) > 1 for name in names}


def _same_guest_same_storage(targets: list[dict], dests: dict) -> list[dict]:
    """Proxmox storage is one flat folder named by VMID: two targets there for one VMID would share archives."""
    problems, first = [], {}
    for i, target in enumerate(targets):
        if target["method"] != "vzdump":
            continue
        for dname in target["destinations"]:
            if (dests.get(dname) or {}).get("kind") != "proxmox":
                continue
            key = (dname, target["vzdump"]["vmid"])
            if key in first:
                problems.append({"where": f"targets[{i}].vzdump.vmid",
                                 "message": f"VMID {key[1]} is backed up to Proxmox storage destination {dname!r} by "
                                            f"targets[{first[key]}] too: their archives would be indistinguishable",
                                 "hint": "Keep one target per guest on a Proxmox storage."})
            first.setdefault(key, i)
    return problems


def fill_defaults(instance: Any, node: dict) -> Any:
    """Apply the schema's `default`s, so code never repeats them."""
    if not isinstance(node, dict):
        return instance
    if isinstance(instance, dict):
        for key, sub in node.get("properties", {}).items():
            if isinstance(sub, dict) and "default" in sub and key not in instance:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                instance[key] = fill_defaults(instance[key], sub)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in instance:
                if key not in node.get("properties", {}):
                    instance[key] = fill_defaults(instance[key], extra)
    elif isinstance(instance, list) and isinstance(node.get("items"), dict):
        return [fill_defaults(item, node["items"]) for item in instance]
    return instance


def _build(data: dict, source: str) -> Config:
    hosts = {name: Host(name=name, **{k: v for k, v in h.items() if k != "description"})
             for name, h in (data.get("hosts") or {}).items()}
    destinations = {name: Destination(name=name, **{k: v for k, v in d.items() if k != "description"})
                    for name, d in (data.get("destinations") or {}).items()}
    policies = {name: {k: v for k, v in p.items() if k != "description"} for name, p in (data.get("policies") or {}).items()}
    shared = _shared_flat_names(data.get("targets") or [])
    targets = [Target(name=t["name"], method=t["method"], host=t["host"], destinations=tuple(t["destinations"]),
                      policy=t.get("policy"), interval=parse_duration(t["interval"]), timeout=parse_duration(t["timeout"]),
                      enabled=t["enabled"], options=t[t["method"]], description=t.get("description"),
                      owns_flat_names=t["name"] not in shared, after=tuple(t["after"]))
               for t in data.get("targets") or []]
    schedules = [Schedule(name=s["name"], targets=tuple(s["targets"]), cron=s.get("cron"), on_commit=s["on_commit"],
                          backend=s["backend"], ping_url=s.get("ping_url"))
                 for s in data.get("schedules") or []]
    return Config(source=source, hosts=hosts, destinations=destinations, policies=policies, targets=targets,
                  schedules=schedules, notify=data.get("notify") or {}, dr=data["dr"], raw=data,
                  state_dir=Path(source).parent / Path(data["state_dir"]).expanduser() if data.get("state_dir") else None)
