"""`bak demo` builds its lab in one folder, runs the whole cycle, and leaves a journal of it."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from conftest import REPO, check_envelope, need, pg_bindir


def test_demo_runs_end_to_end_inside_its_folder():
    if pg_bindir() is None:
        need("initdb")
    # A folder the postgres OS user can traverse (pytest's own tmp folders are private to root).
    tmp_path = __import__("pathlib").Path(tempfile.mkdtemp(prefix="bak-demo-test-"))
    os.chmod(tmp_path, 0o711)
    lab = tmp_path / "lab"
    try:
        _run_demo(tmp_path, lab)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _run_demo(tmp_path, lab):
    """As /bak-demo runs it: the plugin's script, one envelope the agent reads whole."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAK_")}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bak_demo.py"), "--dir", str(lab)], capture_output=True,
                         text=True, timeout=240, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(out.stdout) < 20_000 and out.stderr == ""  # no progress lines: the agent reads both streams
    demo = json.loads(out.stdout)
    check_envelope(demo)
    steps = demo["result"]["steps"]
    assert demo["result"]["passed"] and len(steps) >= 12
    assert all(s["command"].startswith("/backup-skill:bak-") for s in steps)  # what the user can type there
    assert [s for s in steps if s["command"] == "/backup-skill:bak-drill"][0]["ok"]
    assert any("simulated media" in note for note in demo["result"]["notes"])
    assert not any("not found" in note for note in demo["result"]["notes"])
    # The command it ends on shows the lab again, verify and drill included: the lab's config names its state.
    again = shlex.split(demo["result"]["again"])
    assert again == ["/backup-skill:bak-status", "--config", str(lab / "config.yaml")]
    shown = subprocess.run([sys.executable, str(REPO / "scripts" / "bak_status.py"), *again[1:]], capture_output=True,
                           text=True, timeout=60, env=env, cwd=tmp_path)
    targets = json.loads(shown.stdout)["result"]["targets"]
    assert targets and all(t["last_verify"] and t["last_drill"]["status"] == "ok" for t in targets)
    # Two folders on one disk: bak does not count them as two media or the "nfs" folder as off-site.
    assert all(not t["copies"]["ok"] and t["copies"]["media_count"] == 1 for t in targets)
    dumps = sorted(p.name for p in (lab / "backups" / "local" / "postgresql" / "pg-shop").glob("*.dump"))
    assert len(dumps) == 3
    snapshots = [p for p in (lab / "backups" / "nfs" / "rsync").glob("*/rsync-*") if p.is_dir()]
    assert len(snapshots) == 6  # files and vault, three runs each, each target in its own folder
    assert (lab / "restored-files" / "project1" / "notes1.md").exists()
    assert (lab / "state" / "journal.sqlite").exists()
    # Nothing outside the lab: no config or state in the user's folders came from this run.
    assert not any(p for p in tmp_path.iterdir() if p != lab)


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    out = subprocess.run([sys.executable, "-m", "bak", "demo", "--dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 2 and "not empty" in out.stderr  # bad input: nothing was done
    as_json = subprocess.run([sys.executable, str(REPO / "scripts" / "bak_demo.py"), "--dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=60, env=env)
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["errors"][0]["code"] == "demo_folder_not_empty"
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]


def test_demo_without_rsync_leaves_file_snapshots_out_and_still_succeeds(monkeypatch, capsys):
    """A fresh machine may lack rsync: the demo says so and runs the rest."""
    import bak.demo as demo

    real_which = shutil.which
    monkeypatch.setattr(demo.shutil, "which", lambda tool: None if tool == "rsync" else real_which(tool))
    monkeypatch.setattr(demo, "pg_bindir", lambda: None)  # and no PostgreSQL either: the smallest machine
    for key in ("BAK_STATE_DIR", "BAK_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    folder = __import__("pathlib").Path(tempfile.mkdtemp(prefix="bak-demo-min-"))
    try:
        code = demo.run(folder / "lab")
        out = capsys.readouterr().out
        assert code == 0, out[-2000:]
        assert "rsync not found: the demo leaves out the file, vault and config snapshots" in out
        assert "apt-get install rsync" in out and "PostgreSQL server not found" in out
        assert "git not found" not in out  # only what is missing is named
        assert "rsync snapshots" not in out and "streamed to both" not in out  # no caption promises them
        assert "demo finished" in out
        # The line to copy: the lab's config names its state folder, no environment to set.
        assert out.strip().splitlines()[-1].split()[-3:] == ["status", "--config", str(folder / "lab" / "config.yaml")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        import os as _os

        _os.environ.pop("BAK_STATE_DIR", None)
        _os.environ.pop("BAK_CONFIG", None)


def test_install_missing_asks_apt_get_for_exactly_what_is_missing(monkeypatch, tmp_path):
    """As root with apt-get, --install-missing installs the packages of the missing tools (a stand-in apt-get
    records what it is asked); any other way, the demo names the exact command instead."""
    import bak.demo as demo

    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$DEBIAN_FRONTEND $*\" >> {calls}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(demo, "_is_root", lambda: True)
    assert demo.install_missing({"rsync": "rsync", "PostgreSQL server": "postgresql"})
    assert calls.read_text().splitlines() == [
        "noninteractive update -qq", "noninteractive install -y -qq --no-install-recommends postgresql rsync"]
    assert demo.install_command(["rsync"]) == "apt-get install rsync"
    monkeypatch.setattr(demo, "_is_root", lambda: False)
    assert not demo.install_missing({"rsync": "rsync"})  # not root: it only names the command
    assert demo.install_command(["rsync"]) == "sudo apt-get install rsync"
