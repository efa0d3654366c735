"""YAML files people and agents hand to bak (the config, wizard answers), read with bounds.

A file is read only if it is a regular file of a sane size, as UTF-8 text. Aliases are allowed but
their expansion is bounded, so nine nested aliases in a 1 KB file ("billion laughs") are refused at
once instead of costing minutes and gigabytes later, when the schema walks the expanded tree.
A key written twice in one mapping is refused with both lines: YAML's "last one wins" let a stray
second `targets: []` drop every target, or a second `path:` send backups elsewhere, without a word.
Every problem is a ConfigError with the line and column it comes from.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from bak.errors import BadInput, ConfigError

MAX_BYTES = 4 << 20          # a config of a thousand targets is well under 1 MiB
MAX_NODES = 200_000          # nodes once every alias is expanded
MAX_DEPTH = 200              # nesting


def read_text(path: Path, what: str) -> str:
    """The file's text, refused with a clear error when it is not a readable UTF-8 regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{what} not found: {path}", where=str(path), code="config_missing" if what == "config file" else
                       "file_missing",
                       hint="Pass --config, set BAK_CONFIG, run `bak wizard setup`, or start from `bak config example`."
                       if what == "config file" else None) from None
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}", where=str(path)) from None
    if stat.S_ISDIR(info.st_mode):
        raise BadInput(f"{what} {path} is a folder, not a file", where=str(path))
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{what} {path} is not a regular file (a device, pipe or socket)", where=str(path))
    if info.st_size > MAX_BYTES:
        raise BadInput(f"{what} {path} is {info.st_size} bytes; more than {MAX_BYTES} is not a {what}", where=str(path))
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}", where=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([{"where": f"{path}:{line}", "message": f"{what} is not UTF-8 text (byte {exc.start})",
                            "hint": "Save it as UTF-8 (not UTF-16 or a legacy code page)."}], source=str(path)) from None


def parse(text: str, source: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_size(node, source)
            _check_duplicate_keys(node, loader, source)
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([{"where": where, "message": f"malformed YAML: {problem}"[:300]}], source=source) from None
    except RecursionError:
        raise ConfigError([{"where": source, "message": "YAML nested too deeply"}], source=source) from None
    finally:
        loader.dispose()


def _check_size(root, source: str) -> None:
    """Expanded node count and depth, each node counted once however many aliases point at it."""
    import yaml

    expanded: dict[int, int] = {}
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError([{"where": _where(node, source), "message": f"YAML nested deeper than {MAX_DEPTH} levels"}],
                              source=source)
        if id(node) in expanded:
            continue
        children = _children(node, yaml)
        if children_done or not children:
            size = 1 + sum(expanded[id(child)] for child in children)
            if size > MAX_NODES:
                raise ConfigError([{"where": _where(node, source),
                                    "message": f"YAML expands to more than {MAX_NODES} values (aliases repeated "
                                               "inside aliases?)"}], source=source)
            expanded[id(node)] = size
            continue
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in expanded)


def _check_duplicate_keys(root, loader, source: str) -> None:
    """Every mapping's keys, compared as YAML reads them (`yes` and `true` are one key), each mapping once."""
    import yaml

    problems, seen, stack = [], set(), [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                try:
                    value = loader.construct_object(key)
                    hash(value)
                except (yaml.YAMLError, TypeError, ValueError):
                    continue  # an unhashable or odd key: the schema reports it
                if value in first:
                    problems.append({"where": _where(key, source),
                                     "message": f"key {_shown(value)} appears twice in one mapping: on line "
                                                f"{first[value].start_mark.line + 1} and on line {key.start_mark.line + 1}",
                                     "hint": "YAML would keep only the last one: merge them, or remove the stray one."})
                else:
                    first[value] = key
        stack.extend(_children(node, yaml))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p["where"]), source=source)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _children(node, yaml) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _where(node, source: str) -> str:
    mark = getattr(node, "start_mark", None)
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source


def load(path: Path, what: str = "config file") -> Any:
    return parse(read_text(path, what), str(path))
