"""Every command's human output stays readable at 80 and 120 columns: no line wider than the
terminal (unless it is one word that cannot break), no header or value split inside a word.

Each command runs for real on a small lab (two folder destinations, file and config targets, an SSH
host), in-process with COLUMNS set as a narrow terminal or a pipe would give it.
"""

import re
import time

import click
import pytest
import yaml
from click.testing import CliRunner
from rich.text import Text

from bak import report
from bak.cli import cli
from conftest import need, run_cli, write_config

WIDTHS = (80, 120)
# Documents meant to be saved as they are (YAML, Markdown), and the demo, made of the commands below.
NOT_TABLES = {"config example", "config reference", "demo"}
BOX = "│┃┆┊║|╭╮╰╯┏┓┗┛┡┩┢┪━─═┳┻╇╈┼┤├┬┴"


def leaf_commands(group=cli, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name))


@pytest.fixture
def lab(bak_home, sshd, monkeypatch):
    need("rsync")
    monkeypatch.setenv("HOME", str(bak_home / "home"))
    (bak_home / "home").mkdir()
    source = bak_home / "source-folder-with-a-rather-long-name"
    (source / "notes").mkdir(parents=True)
    (source / "notes" / "meeting.md").write_text("# notes\n")
    (bak_home / "settings").mkdir()
    (bak_home / "settings" / "settings.json").write_text("{}\n")
    known = sshd.trust(bak_home / "known_hosts")
    (bak_home / "restic.pass").write_text("restic password\n")
    (bak_home / "restic.pass").chmod(0o600)
    restic = {"kind": "restic", "password": {"file": str(bak_home / "restic.pass")}}
    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": {"store": sshd.host_config(known)},
        "destinations": {"local-disk": {"kind": "local", "path": str(bak_home / "backups-on-this-disk"), "medium": "ssd"},
                         "nfs-share": {"kind": "ssh", "host": "store", "path": str(bak_home / "nfs"), "medium": "nfs",
                                       "offsite": True},
                         **{name: {**restic, "repository": str(bak_home / name)}
                            for name in ("usb-restic", "spare-80", "spare-120")}},
        "policies": {"standard": {"keep_daily": 7, "keep_weekly": 4}},
        "targets": [{"name": "project-files", "method": "rsync", "destinations": ["local-disk", "nfs-share"],
                     "policy": "standard", "interval": "1d", "rsync": {"source": str(source)}},
                    {"name": "claude-code-settings", "method": "config", "destinations": ["local-disk", "usb-restic"],
                     "interval": "1w", "config": {"source": str(bak_home / "settings")}}],
        "schedules": [{"name": "files-daily", "targets": ["project-files"], "cron": "30 2 * * *"}]})
    assert run_cli("create").code in (0, 1)
    time.sleep(1.1)
    assert run_cli("create").code in (0, 1)
    answers = bak_home / "answers.yaml"
    answers.write_text(yaml.safe_dump({"destinations": {"here": {"kind": "local", "path": str(bak_home / "w")}},
                                       "folders": [{"name": "documents", "source": str(source)}]}))
    (bak_home / "textfile").mkdir()
    return {"home": bak_home, "answers": answers, "fingerprint": sshd.fingerprint(),
            "crontab": bak_home / "crontab", "textfile": bak_home / "textfile"}


def scenarios(lab, width):
    home = lab["home"]
    return {
        "config check": [["config", "check"]],
        "ssh trust": [["ssh", "trust", "store", "--fingerprint", lab["fingerprint"]]],
        "ssh check": [["ssh", "check"]],
        "log": [["log"]],
        "prune": [["prune", "--dry-run"], ["prune", "--simulate", "--keep-daily", "7", "--every", "6h", "--days", "30"]],
        "create": [["create", "--dry-run"]],
        "verify": [["verify"]],
        "restore": [["restore", "-t", "project-files", "--dry-run"],
                    ["restore", "-t", "project-files", "--into", str(home / f"restored-{width}")]],
        "list": [["list"]],
        "status": [["status"]],
        "pg dump": [["pg", "dump"]],
        "pg verify": [["pg", "verify"]],
        "pg restore": [["pg", "restore", "-t", "project-files"]],
        "pg drill": [["pg", "drill"]],
        "drill": [["drill"]],
        "dr plan": [["dr", "plan"], ["dr", "plan", "--runbook", str(home / f"runbook-{width}.md")]],
        "dr drill": [["dr", "drill"]],
        "discover": [["discover"]],
        "bootstrap": [["bootstrap", "--from", str(home / "backups-on-this-disk"), "--force"]],
        "schedule show": [["schedule", "show", "--crontab-file", str(lab["crontab"])]],
        "schedule install": [["schedule", "install", "--dry-run", "--crontab-file", str(lab["crontab"]),
                              "--unit-dir", str(home / "units"), "--task-dir", str(home / "tasks")]],
        "schedule remove": [["schedule", "remove", "--dry-run", "--crontab-file", str(lab["crontab"]),
                             "--unit-dir", str(home / "units"), "--task-dir", str(home / "tasks")]],
        "wizard setup": [["wizard", "setup", "--answers", str(lab["answers"]), "--output", str(home / f"new-{width}.yaml")]],
        "wizard strategy": [["wizard", "strategy", "--measure"]],
        "doctor": [["doctor"]],
        "metrics": [["metrics", "--textfile", str(lab["textfile"])]],
        "report": [["report", "--html", str(home / f"report-{width}.html")]],
        "skill install": [["skill", "install"]],
        "sync": [["sync", "--to", "usb-restic", "--dry-run"], ["sync", "--to", "usb-restic"]],
        "destination init": [["destination", "init", f"spare-{width}"]],
    }


def words(text: str) -> list[str]:
    return Text.from_markup(text).plain.split()


def test_every_command_is_covered(tmp_path):
    stub = {"home": tmp_path, "answers": "", "fingerprint": "", "crontab": "", "textfile": ""}
    assert set(leaf_commands()) == set(scenarios(stub, 80)) | NOT_TABLES


@pytest.mark.parametrize("width", WIDTHS)
def test_human_output_fits_and_never_splits_a_word(lab, width, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    shown: list[str] = []  # every header and cell bak asked to show, to find whole in the output
    real_table = report.table

    def recording_table(title, columns, rows):
        cells = [["" if v is None else str(v) for v in row] for row in rows]
        filled = [c for i, c in enumerate(columns) if any(words(row[i]) for row in cells)]  # empty ones may be left out
        shown.extend(w for text in [title, *filled, *(v for row in cells for v in row)] for w in words(text))
        real_table(title, columns, rows)

    monkeypatch.setattr(report, "table", recording_table)
    for command, runs in scenarios(lab, width).items():
        for argv in runs:
            shown.clear()
            result = CliRunner().invoke(cli, argv, catch_exceptions=False)
            output = click.unstyle(result.stdout + result.stderr)
            assert output.strip(), (command, argv)
            for line in output.splitlines():
                assert len(line.rstrip()) <= width or len(line.strip(BOX + " ").split()) == 1, \
                    f"{argv} at {width} columns: {line!r}"
            flat = re.sub(f"[{BOX}\\s]+", " ", output)
            for word in shown:
                if 3 <= len(word) <= width - 20:
                    assert re.search(rf"(?<!\S){re.escape(word)}(?!\S)", flat), \
                        f"{argv} at {width} columns: {word!r} is not shown whole\n{output}"


@pytest.mark.parametrize("argv", [
    ["config", "example", "--config", "x.yaml"],  # prints a fixed example: no config is read
    ["config", "reference", "--config", "x.yaml"],
    ["schedule", "show", "--dry-run"],  # show never changes anything
    ["pg", "restore", "-t", "app", "--file", "x"],  # a dump has no files to pick
    ["create", "--all", "--target", "app"],  # --all says every target: not with --target
    ["prune", "--all", "--target", "app"],
])
def test_options_that_would_do_nothing_are_not_offered(argv, bak_home):
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert "No such option" in result.output or "exclude each other" in result.output


def test_help_describes_every_option_and_argument():
    def walk(group=cli, path=()):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, (*path, name))
            else:
                yield (*path, name), command

    for path, command in walk():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"bak {' '.join(path)} {param.opts[0]} has no help"
            else:
                assert (param.metavar or param.human_readable_name).strip("[].").upper() in (command.help or ""), \
                    f"bak {' '.join(path)} {param.human_readable_name} is not described"


# --- one line per row: `bak list` and `bak log` ---------------------------------------------------------
@pytest.fixture
def listed(bak_home):
    """Backups with the seed's long names (a VM's vzdump archives, PostgreSQL dumps, one without its
    sidecar, one protected) and a journal with failures whose error text is long."""
    import hashlib
    from datetime import datetime, timedelta

    from bak import naming
    from bak.journal import Journal

    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": {"pve": {"address": "127.0.0.1", "port": 2}},
        "destinations": {"nfs-share": {"kind": "local", "path": str(bak_home / "nfs")},
                         "usb-disk": {"kind": "local", "path": str(bak_home / "usb")}},
        "targets": [{"name": "vm-104", "method": "vzdump", "host": "pve", "destinations": ["nfs-share"], "interval": "1d",
                     "vzdump": {"vmid": 104, "storage": "local"}},
                    {"name": "nextcloud-db", "method": "pg_dump", "destinations": ["nfs-share", "usb-disk"],
                     "interval": "6h", "pg_dump": {"database": "nextcloud"}}]})
    now = datetime.now().replace(microsecond=0)
    made = []
    for days in range(4):
        made.append(("nfs-share", "proxmox/vm-104", naming.vzdump_name(104, now - timedelta(days=days, hours=3))))
        for store in ("nfs-share", "usb-disk"):
            made.append((store, "postgresql/nextcloud-db", naming.pg_dump_name("nextcloud", now - timedelta(days=days))))
    for index, (store, folder, name) in enumerate(made):
        place = bak_home / ("nfs" if store == "nfs-share" else "usb") / folder
        place.mkdir(parents=True, exist_ok=True)
        (place / name).write_bytes(b"x" * (1000 + index * 4000))
        if index != 3:  # one backup lost its sidecar
            (place / f"{name}.sha256").write_text(f"{hashlib.sha256((place / name).read_bytes()).hexdigest()}  {name}\n")
        if index == 4:
            (place / f"{name}.protected").write_text("")
    journal = Journal.default()
    for index in range(12):
        op = journal.start(["create", "verify", "prune"][index % 3], ["vm-104", "nextcloud-db"][index % 2], {})
        failed = index % 4 == 0
        journal.finish(op, "failed" if failed else "ok", bytes_=123456 * index,
                       error_tail="pg_dump: error: connection to server at \"192.0.2.10\", port 5432 failed: "
                                  "Connection refused. Is the server running on that host and accepting TCP/IP "
                                  "connections?" if failed else None)
    journal.close()
    return made


@pytest.mark.parametrize("width", WIDTHS)
def test_list_and_log_give_one_line_per_row(listed, width, monkeypatch):
    from bak.report import short_time

    monkeypatch.setenv("COLUMNS", str(width))
    listing = run_cli("list").envelope["result"]["backups"]
    out = click.unstyle(CliRunner().invoke(cli, ["list"], catch_exceptions=False).stdout)
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), out
    for backup in listing:  # each backup: one line, with its destination, time and size
        (line,) = [l for l in lines if l.split()[:2] == [backup["store"], backup["name"]]]
        assert short_time(backup["when"]) in line
        assert report.human_size(backup["size"]) in line
    # the one that lost its sidecar is no backup (issue 30): listed once, as a foreign file
    assert len(listing) == len(listed) - 1 == 11
    assert sum(1 for l in lines if listed[3][2] in l) == 1 and sum(1 for l in lines if "protected:" in l) == 1

    operations = run_cli("log").envelope["result"]["operations"]
    out = click.unstyle(CliRunner().invoke(cli, ["log"], catch_exceptions=False).stdout)
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), out
    for op in operations:
        (line,) = [l for l in lines if l.split()[:1] == [str(op["id"])]]
        assert line.split()[1:] == [*short_time(op["started_at"]).split(), op["kind"], op["target"], op["status"],
                                    *report.human_size(op["bytes"]).split()]
    # The long error, once, under the table, naming the rows it belongs to.
    failed = [f"{o['target']} #{o['id']}" for o in operations if o["status"] == "failed"]
    assert out.count("Connection refused") == 1 and f"({', '.join(failed)})" in " ".join(out.split())
