"""references/config.md, rendered from schema.json so the two cannot drift apart."""

from __future__ import annotations

import json

SECTIONS = ["version", "state_dir", "hosts", "destinations", "policies", "targets", "schedules", "notify", "dr"]


def _type(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "anyOf" in node and "type" not in node:  # a value or a secret reference to it
        return " or ".join(dict.fromkeys(_type(branch) for branch in node["anyOf"]))
    kind = node.get("type", "")
    if kind == "array" and isinstance(node.get("items"), dict) and node["items"].get("type") != "object":
        return f"list of {node['items'].get('type', 'value')}"
    return kind if isinstance(kind, str) else " or ".join(kind)


def _rows(node: dict, path: str) -> list[str]:
    rows = []
    required = set(node.get("required", []))
    for key, sub in node.get("properties", {}).items():
        if not isinstance(sub, dict):
            continue
        here = f"{path}.{key}" if path else key
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ("required" if key in required else "")
        example = json.dumps(sub["examples"][0], ensure_ascii=False) if sub.get("examples") else ""
        if len(example) > 60:
            example = example[:57] + "..."
        rows.append(f"| `{here}` | {_type(sub)} | {default} | {sub.get('description', '')} | `{example}` |")
        if sub.get("type") == "object" and "properties" in sub:
            rows.extend(_rows(sub, here))
        elif sub.get("type") == "array" and isinstance(sub.get("items"), dict) and "properties" in sub["items"]:
            rows.extend(_rows(sub["items"], here + "[]"))
    return rows


def render(schema: dict) -> str:
    lines = ["# Config reference", "",
             "Generated from `lib/bak/config/schema.json` by `bak config reference`; a test fails if they differ.",
             "Every object rejects unknown keys. `bak config example` prints a complete valid config (an example homelab).",
             "", "Contents: " + ", ".join(f"[`{s}`](#{s})" for s in SECTIONS) + ".", ""]
    for section in SECTIONS:
        node = schema["properties"][section]
        lines += [f"## `{section}`", "", node["description"], ""]
        header = ["| key | type | default | meaning | example |", "|---|---|---|---|---|"]
        if node.get("type") not in ("object", "array"):  # a top-level value: one row
            required = "required" if section in schema.get("required", []) else ""
            example = json.dumps(node["examples"][0], ensure_ascii=False) if node.get("examples") else ""
            lines += header + [f"| `{section}` | {_type(node)} | {required} | {node['description']} | `{example}` |", ""]
            continue
        item = node.get("additionalProperties") if node.get("type") == "object" and "properties" not in node else None
        if isinstance(item, dict):
            lines += [f"Keys are names (`{section}.NAME`). " + item["description"], ""]
            lines += header + _rows(item, f"{section}.NAME") + [""]
        elif node.get("type") == "array":
            lines += [node["items"]["description"], ""] + header + _rows(node["items"], f"{section}[]") + [""]
        else:
            lines += header + _rows(node, section) + [""]
    return "\n".join(lines)
