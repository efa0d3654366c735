"""The envelope the agent reads (bak.digest): whole when it fits, else a view that fits and a file with
everything; where a command reads its state and config from; hints that name what the user can run."""

import json
import os
import stat
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bak import digest, front
from conftest import REPO, check_envelope, run_cli, write_config


def envelope(command: str, result, errors=()) -> dict:
    return {"command": command, "ok": not errors, "started_at": "2026-12-07T00:00:00+00:00", "duration_s": 0.1,
            "result": result, "warnings": [], "errors": list(errors)}


rows = st.lists(st.fixed_dictionaries({
    "target": st.sampled_from(["db", "files", "vault"]), "store": st.sampled_from(["nfs", "usb"]),
    "name": st.text(min_size=1, max_size=80), "when": st.just("2026-12-07T00:00:00"), "size": st.integers(0, 10**12),
    "added": st.none(), "checksum": st.booleans(), "protected": st.booleans(), "method": st.just("pg_dump"),
    "sidecars": st.lists(st.text(max_size=60), max_size=3)}), max_size=400)
problems = st.lists(st.builds(lambda code, message, where: {"code": code, "message": message, "where": where,
                                                            "hint": None},
                              st.sampled_from(["verify_failed", "target_stale"]), st.text(max_size=300),
                              st.sampled_from(["db", "files", None])), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(backups=rows, errors=problems)
def test_a_view_always_fits_and_the_file_holds_everything(tmp_path, backups, errors):
    full = envelope("list", {"targets": [], "backups": backups, "partials": [], "foreign": [], "safety_copies": []},
                    errors)
    shown = digest.fit(full, None, tmp_path)
    assert len(json.dumps(shown, separators=(",", ":"))) <= digest.BUDGET
    check_envelope(shown)
    if shown is full:
        return
    kept = shown["result"]["backups"]
    assert len(kept) + shown["detail"]["omitted"].get("backups", 0) == len(backups)
    assert all(row in backups for row in kept)  # rows are cut, never changed
    first = [row for row in backups if not row["checksum"]]
    assert kept[:len(first)] == first[:len(kept)]  # those without a checksum are shown first
    path = shown["detail"]["file"]
    assert json.loads(open(path).read()) == full and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_small_envelope_is_printed_whole_and_writes_no_file(tmp_path):
    small = envelope("list", {"targets": [], "backups": [], "partials": [], "foreign": [], "safety_copies": []})
    assert digest.fit(small, None, tmp_path) is small and not (tmp_path / "details").exists()


def test_an_explicit_limit_cuts_rows_and_never_passes_the_ceiling(tmp_path):
    backups = [{"target": "db", "store": "nfs", "name": f"pg-db-{i}.dump", "when": "2026-12-07T00:00:00", "size": i,
                "checksum": True, "protected": False, "method": "pg_dump", "sidecars": []} for i in range(5000)]
    full = envelope("list", {"targets": [], "backups": backups, "partials": [], "foreign": [], "safety_copies": []})
    five = digest.fit(full, 5, tmp_path)
    assert len(five["result"]["backups"]) == 5 and five["detail"]["omitted"] == {"backups": 4995}
    many = digest.fit(full, 5000, tmp_path)
    assert len(json.dumps(many, separators=(",", ":"))) <= digest.CEILING < 30_000


def test_one_problem_of_many_targets_is_said_once():
    errors = [{"code": "rule_321", "message": f"{t}: 3-2-1 not met: missing 1 offsite", "where": t, "hint": "Add one."}
              for t in ("db", "files", "vault")] + [{"code": "verify_failed", "message": "x", "where": "db", "hint": None}]
    grouped = digest.group_errors(errors)
    assert grouped[0] == {"code": "rule_321", "message": "3-2-1 not met: missing 1 offsite", "where": "db, files, vault",
                          "hint": "Add one."}
    assert grouped[1:] == errors[3:]


def test_old_detail_files_go_and_nothing_else_in_that_folder(tmp_path):
    folder = tmp_path / "details"
    folder.mkdir()
    (folder / "my-notes.json").write_text("{}")  # not a name bak gives: never removed
    big = envelope("list", {"targets": [], "backups": [{"target": "db", "store": "s", "name": "x" * 100, "when": "w",
                                                         "size": 1, "checksum": True, "protected": False,
                                                         "method": "m", "sidecars": []}] * 300,
                            "partials": [], "foreign": [], "safety_copies": []})
    for second in range(digest.KEPT_FILES + 5):
        path = digest.fit(big, None, tmp_path)["detail"]["file"]
        os.utime(path, (second, second))
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == digest.KEPT_FILES + 1 and "my-notes.json" in names


# --- where a command reads its config and keeps its state -------------------------------------------------
def test_state_dir_from_the_option_the_environment_or_the_config(bak_home, monkeypatch):
    lab = bak_home / "lab"
    lab.mkdir()
    write_config(lab / "config.yaml", {"version": 1, "state_dir": "state", "targets": []})
    monkeypatch.delenv("BAK_STATE_DIR")
    assert run_cli("log", "--config", str(lab / "config.yaml")).code == 0
    run_cli("destination", "init", "nowhere", "--config", str(lab / "config.yaml"))  # any command: a state folder
    assert (lab / "state").is_dir() and not (bak_home / "state").exists()  # the key, from the config's folder
    assert run_cli("log", "--config", str(lab / "config.yaml"), "--state-dir", str(bak_home / "other")).code == 0
    monkeypatch.setenv("BAK_STATE_DIR", str(bak_home / "from-env"))
    from bak import paths

    run_cli("status", "--config", str(lab / "config.yaml"))
    assert (bak_home / "from-env").is_dir()  # the environment comes before the key
    run_cli("status", "--config", str(lab / "config.yaml"), "--state-dir", str(bak_home / "option"))
    assert (bak_home / "option").is_dir()  # and the option before both
    assert paths._CHOSEN == {"option": None, "config": None}  # nothing lingers after a command


def test_config_and_state_dir_before_the_command(bak_home):
    from click.testing import CliRunner

    from bak.cli import cli

    write_config(bak_home / "elsewhere.yaml", {"version": 1, "targets": []})
    out = CliRunner().invoke(cli, ["--config", str(bak_home / "elsewhere.yaml"), "--state-dir", str(bak_home / "st"),
                                   "config", "check", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["result"]["path"] == str(bak_home / "elsewhere.yaml")
    missing = CliRunner().invoke(cli, ["--config", str(bak_home / "none.yaml"), "status", "--json"])
    assert missing.exit_code == 2 and json.loads(missing.stdout)["errors"][0]["code"] == "config_missing"


# --- hints name what the user can run where they are ------------------------------------------------------
def test_through_the_scripts_hints_name_slash_commands(tmp_path):
    env = {**os.environ, "BAK_CONFIG": str(tmp_path / "missing.yaml"), "BAK_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bak_status.py")], capture_output=True, text=True,
                         env=env, timeout=60)
    error = json.loads(out.stdout)["errors"][0]
    assert out.returncode == 2 and "/backup-skill:bak-wizard setup" in error["hint"]
    assert "`bak " not in error["hint"]  # no `bak` command exists in plugin mode
    cli = subprocess.run([sys.executable, "-m", "bak", "status", "--json"], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(REPO / "lib")}, timeout=60)
    assert "`bak wizard setup`" in json.loads(cli.stdout)["errors"][0]["hint"]  # from a terminal, the bak command


def test_rewriting_leaves_paths_modules_and_file_contents_alone(monkeypatch):
    monkeypatch.setitem(front._SLASH, "prefix", None)
    front.use_slash_commands(REPO / "x" / ".claude" / "skills" / "backup-skill" / "scripts", ["status", "create", "pg"])
    try:
        assert front.rewrite("run bak status --help; then bak pg restore") == "run /bak-status --help; then /bak-pg restore"
        for kept in ("/srv/bak status", "python3 -m bak create", "bak's status", "user@bak status", "bak statuses"):
            assert front.rewrite(kept) == kept
        assert front.rewrite_all({"hint": "bak create", "content": "0 2 * * * bak create"}) == \
            {"hint": "/bak-create", "content": "0 2 * * * bak create"}
    finally:
        front._SLASH.update(prefix=None, pattern=None)
