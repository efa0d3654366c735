"""The plugin folder works on first use: a fresh clone run by a Python that has none of bak's
dependencies sets up bak's own environment once, reuses it, rebuilds it for a new version, and
without network answers with one envelope (exit 3) that says how to fix it.

pip never leaves loopback here: it installs from the wheel folder tests/run.sh downloads
(PIP_NO_INDEX + PIP_FIND_LINKS), or is pointed at a closed port on 127.0.0.1.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from conftest import REPO, unavailable

WHEELHOUSE = REPO / "tests" / ".wheelhouse"
ENVELOPE = Draft202012Validator(json.loads((REPO / "lib" / "bak" / "schemas" / "envelope.json").read_text()))


def fresh_clone(dest: Path) -> Path:
    """The files a clone has (tracked and not ignored), copied from the working tree so uncommitted edits count."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python with none of bak's dependencies (and no pip): a venv without system site-packages."""
    folder = tmp_path_factory.mktemp("bare-python")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import click"], capture_output=True).returncode != 0
    return python


@pytest.fixture
def machine(tmp_path):
    """A fresh clone and a HOME of its own; pip reads no config file of this machine."""
    if not any(WHEELHOUSE.glob("*.whl")):
        unavailable(f"no wheels in {WHEELHOUSE} (bash tests/run.sh downloads them)")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "BAK_", "XDG_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PIP_CONFIG_FILE=os.devnull)
    return {"clone": fresh_clone(tmp_path / "bak"), "home": home, "env": env,
            "envs": home / ".local" / "share" / "bak"}


def script(machine, python, *args, extra_env=None, **kw):
    return subprocess.Popen([str(python), str(machine["clone"] / "scripts" / "bak_status.py"), *args],
                            cwd=machine["home"], env={**machine["env"], **(extra_env or {})}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def one_envelope(stdout: str) -> dict:
    envelope = json.loads(stdout)  # the whole of stdout is one JSON object
    ENVELOPE.validate(envelope)
    return envelope


OFFLINE = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
WHEELS = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)}


def test_offline_first_use_is_one_envelope_exit_3_and_its_fix_works(machine, bare_python):
    code, out, err = finish(script(machine, bare_python, "--config", "lab.yaml", extra_env=OFFLINE))
    assert code == 3, out + err
    error = one_envelope(out)["errors"][0]
    assert error["code"] == "environment_setup_failed" and "pip" in error["message"]
    assert "setting up bak's Python environment" in err  # progress on stderr, never on stdout
    assert not list(machine["envs"].glob("env-*"))  # nothing half-built left behind
    # The hint's offline fix, taken word for word: a wheel folder and the same command again.
    fix = error["hint"].split("then run: ", 1)[1]
    words = shlex.split(fix.replace("bak-wheels", str(WHEELHOUSE)))
    assigned = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    argv = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    assert argv == [str(bare_python), str(machine["clone"] / "scripts" / "bak_status.py"), "--config", "lab.yaml"]
    fixed = subprocess.run(argv, cwd=machine["home"], env={**machine["env"], **assigned}, capture_output=True,
                           text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert fixed.returncode == 2, fixed.stdout + fixed.stderr  # bak itself answers now: that config does not exist
    assert one_envelope(fixed.stdout)["errors"][0]["code"] == "config_missing"


def test_first_use_builds_once_even_twice_at_once_then_reuses_and_upgrades(machine, bare_python):
    clock = time.monotonic()
    first = [script(machine, bare_python, extra_env=WHEELS) for _ in range(2)]
    results = [finish(p) for p in first]
    built_s = time.monotonic() - clock
    for code, out, err in results:
        assert code == 2, out + err  # no config yet: bak's own answer, from the new environment
        assert one_envelope(out)["errors"][0]["code"] == "config_missing"
    logs = [err for _, _, err in results]
    assert sum("setting up bak's Python environment" in log for log in logs) == 1, logs
    assert sum("waiting for another bak run" in log for log in logs) <= 1
    marker = machine["envs"] / "env-0.1.0" / "bak-env.json"
    assert json.loads(marker.read_text())["version"] == "0.1.0"

    clock = time.monotonic()
    code, out, err = finish(script(machine, bare_python, "--help", extra_env=OFFLINE))  # no network needed now
    reused_s = time.monotonic() - clock
    assert code == 0 and "Usage:" in out and "setting up" not in err, err
    assert reused_s < max(5.0, built_s / 3), (reused_s, built_s)

    init = machine["clone"] / "lib" / "bak" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.1.1"'))
    code, out, err = finish(script(machine, bare_python, extra_env=WHEELS))
    assert code == 2 and "once for version 0.1.1" in err, err
    assert sorted(p.name for p in machine["envs"].glob("env-*")) == ["env-0.1.1"]  # the old one is gone


def test_every_dependency_in_pyproject_is_pinned_within_its_range_and_checked_by_the_scripts():
    from packaging.requirements import Requirement

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import _bak
    finally:
        sys.path.remove(str(REPO / "scripts"))
    declared = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = {}
    for line in (REPO / "scripts" / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            pins[pin.name.lower()] = next(iter(pin.specifier)).version
    for requirement in declared:
        assert requirement.name.lower() in pins, requirement
        assert requirement.specifier.contains(pins[requirement.name.lower()]), (requirement, pins[requirement.name.lower()])
    assert set(_bak.MODULES) == {r.name.lower() for r in declared}


def test_the_version_is_the_same_everywhere():
    import bak

    plugin = json.loads((REPO / ".claude-plugin" / "plugin.json").read_text())
    market = json.loads((REPO / ".claude-plugin" / "marketplace.json").read_text())
    skill = (REPO / "SKILL.md").read_text()
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == bak.__version__
    assert plugin["version"] == market["plugins"][0]["version"] == bak.__version__
    assert f'version: "{bak.__version__}"' in skill
