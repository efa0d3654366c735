"""Every error code bak can put in an envelope is documented in references/json-output.md (issue 30, item 13).

The codes are read from the source itself (the whole library and the plugin's scripts), not from a list kept
by hand: a class's `code = "..."`, every string in a `code=` argument, every `{"code": ...}` literal, every
`outcome.problem("...")`. A code built at run time (`doctor_` + a check's name, `target_` + a state) is
expanded from where its parts are defined.
"""

import ast
import re

from conftest import REPO

SOURCES = sorted((REPO / "lib" / "bak").rglob("*.py")) + sorted((REPO / "scripts").glob("*.py"))
CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def strings_in(node: ast.AST) -> set[str]:
    """The codes an expression can give: a string, either branch of `a if c else b`, an argument of a call
    (`next(..., "write_failed")`); never a key it reads (`exc["code"]`)."""
    if isinstance(node, ast.Constant):
        return {node.value} if isinstance(node.value, str) and CODE.match(node.value) else set()
    if isinstance(node, ast.IfExp):
        return strings_in(node.body) | strings_in(node.orelse)
    if isinstance(node, ast.BoolOp):
        return set().union(*(strings_in(v) for v in node.values))
    if isinstance(node, ast.Call):
        return set().union(set(), *(strings_in(a) for a in node.args))
    return set()


def dynamic_prefix(node: ast.AST) -> str | None:
    """`f"target_{...}"` or `"doctor_" + ...`: the constant text a code built at run time starts with."""
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return node.values[0].value
    if isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant):
        return node.left.value
    if isinstance(node, ast.IfExp):
        return dynamic_prefix(node.body) or dynamic_prefix(node.orelse)
    return None


def raised_codes() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(code -> files that raise it, prefix of a code built at run time -> files)."""
    codes: dict[str, set[str]] = {}
    dynamic: dict[str, set[str]] = {}

    def found(code, path):
        codes.setdefault(code, set()).add(path.name)

    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.Assign) and [t.id for t in item.targets if isinstance(t, ast.Name)] == ["code"]:
                        for code in strings_in(item.value):
                            found(code, path)
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "code":
                        for code in strings_in(keyword.value):
                            found(code, path)
                if isinstance(node.func, ast.Attribute) and node.func.attr == "problem" and node.args:
                    first = node.args[0]
                    prefix = dynamic_prefix(first)
                    if prefix:
                        dynamic.setdefault(prefix, set()).add(path.name)
                    for code in strings_in(first):
                        found(code, path)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "code" and value is not None:
                        for code in strings_in(value):
                            found(code, path)
    return codes, dynamic


def doctor_checks() -> set[str]:
    """The names doctor gives its checks (`checks.add("proxmox lock", ...)`): each fails as doctor_<name>."""
    tree = ast.parse((REPO / "lib" / "bak" / "doctor.py").read_text())
    return {node.args[0].value.replace(" ", "_") for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and len(node.args) >= 3}


def expansions() -> dict[str, set[str]]:
    from bak.cli import _STATE_STYLE

    return {"doctor_": {f"doctor_{check}" for check in doctor_checks()},
            "target_": {f"target_{state.lower()}" for state in _STATE_STYLE if state != "OK"},
            "destination_": {"destination_warn", "destination_critical"}}  # status: a level other than ok/missing/unreachable


def documented() -> set[str]:
    text = (REPO / "references" / "json-output.md").read_text()
    table = text.split("## Error codes", 1)[1]
    return {code for line in table.splitlines() if line.startswith("| `")
            for code in re.findall(r"`([a-z][a-z0-9_]*)`", line.split("|")[1])}


def test_every_error_code_raised_is_documented():
    codes, dynamic = raised_codes()
    known = expansions()
    assert set(dynamic) <= set(known), f"a code built at run time that this test cannot expand: {set(dynamic) - set(known)}"
    for prefix in dynamic:
        for code in known[prefix]:
            codes.setdefault(code, set()).add(f"({prefix}...)")
    missing = {code: sorted(files) for code, files in codes.items() if code not in documented()}
    assert not missing, f"error codes raised but not in references/json-output.md: {missing}"


def test_the_scan_finds_the_codes_it_should():
    """The reader of the source works: it sees codes of each kind of place (a test of the test)."""
    codes, dynamic = raised_codes()
    assert {"lock_held", "would_overwrite", "interrupted", "internal_error", "container_not_restarted",
            "unprotected", "rsync_failed", "disk_full", "write_failed"} <= set(codes)
    assert set(dynamic) == {"doctor_", "target_", "destination_"}
    assert {"doctor_ssh", "doctor_proxmox_lock"} <= expansions()["doctor_"]
    assert {"target_missing", "target_failing", "target_attention"} - expansions()["target_"] == {"target_attention"}
