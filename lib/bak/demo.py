"""`bak demo`: a sandbox homelab in one folder, backed up, verified, restored, drilled and pruned.

Everything lives under the lab folder and loopback: a throwaway PostgreSQL cluster on
127.0.0.1 (when its binaries exist), destinations as folders, bak's state in lab/state.
"""

from __future__ import annotations

import os
import secrets as random_secrets
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path

import yaml

from bak.errors import BadInput, BakError
from bak.run.local import LocalRunner

SAMPLE_SQL = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, city text);
INSERT INTO customers (name, city) SELECT 'customer ' || g, (ARRAY['Lyon','Paris','Nantes','Lille'])[1 + g % 4]
  FROM generate_series(1, 2000) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id), total numeric(10,2),
  placed_at timestamptz DEFAULT now());
INSERT INTO orders (customer_id, total) SELECT 1 + g % 2000, (g % 500) * 1.25 FROM generate_series(1, 10000) g;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO backup;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO backup;
"""


def pg_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoCluster:
    """A PostgreSQL cluster owned by the demo, on 127.0.0.1 and a private socket folder."""

    def __init__(self, root: Path, bindir: Path):
        self.root, self.bindir = root, bindir
        self.data = root / "data"
        self.port = free_port()
        self.runner = LocalRunner()
        self.os_user = "postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
        self.superuser_password = random_secrets.token_urlsafe(18)

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.os_user, "--", *argv] if self.os_user else argv

    def start(self) -> None:
        self.root.mkdir(parents=True)
        if self.os_user:
            import pwd

            self.root.parent.chmod(0o711)  # the postgres user may traverse the lab, not list it
            if self.runner.run(["runuser", "-u", self.os_user, "--", "test", "-x", str(self.root.parent)],
                               check=False).returncode != 0:
                raise BakError(f"the {self.os_user} user cannot reach {self.root.parent} (a parent folder is private)",
                               code="demo_folder_private", hint="Omit --dir, or pick a folder under /tmp.")
            owner = pwd.getpwnam(self.os_user)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        # initdb runs as the postgres user and reads the throwaway superuser password from a file of the lab's.
        pwfile = self.root / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{self.superuser_password}\n")
        try:
            if self.os_user:
                os.chown(pwfile, pwd.getpwnam(self.os_user).pw_uid, -1)
            self.runner.run(self._as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                            "-A", "scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
                                            "--no-sync"]))
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n")
        self.runner.run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                                        "-w", "start"]))

    def sql(self, statement: str, database: str = "postgres") -> None:
        argv = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        self.runner.run(argv, stdin=statement.encode(), env={"PGPASSWORD": self.superuser_password})

    def stop(self) -> None:
        self.runner.run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                        check=False)


# What the demo uses that a fresh machine may lack, with the Debian package that brings it.
PACKAGES = {"rsync": "rsync", "git": "git", "PostgreSQL server": "postgresql"}


def missing_tools() -> dict[str, str]:
    """{what: package} for each tool the demo would use and cannot find."""
    found = {"rsync": shutil.which("rsync"), "git": shutil.which("git"), "PostgreSQL server": pg_bindir()}
    return {name: PACKAGES[name] for name, where in found.items() if not where}


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def install_command(packages: list[str]) -> str:
    """The exact command that installs `packages` here, for the operator to run."""
    if shutil.which("apt-get"):
        return ("" if _is_root() else "sudo ") + "apt-get install " + " ".join(packages)
    if shutil.which("brew"):
        return "brew install " + " ".join({"postgresql": "postgresql@16"}.get(p, p) for p in packages)
    return "install " + ", ".join(packages) + " with this system's package manager"


def install_missing(missing: dict[str, str], say=None) -> bool:
    """apt-get, as root, what the demo lacks (as tests/run.sh does for the tests); False when it cannot."""
    if not missing or not (_is_root() and shutil.which("apt-get")):
        return False
    packages = sorted(set(missing.values()))
    (say or _echo)(f"installing {', '.join(missing)} with apt-get ({' '.join(packages)}) ...")
    runner, quiet = LocalRunner(), {"DEBIAN_FRONTEND": "noninteractive"}
    runner.run(["apt-get", "update", "-qq"], env=quiet)
    runner.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=quiet)
    return True


def _echo(text: str) -> None:
    import click

    click.echo(text)


def build_sources(lab: Path, runner: LocalRunner, with_git: bool) -> None:
    """A file tree, a config folder and (with git) a vault with a local bare remote, all inside the lab."""
    files = lab / "source" / "projects"
    for index in range(40):
        folder = files / f"project{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"notes{index}.md").write_text(f"# note {index}\n" + "lorem ipsum " * (index * 20))
    (files / "scratch.tmp").write_text("excluded")
    config = lab / "source" / "claude-config"
    config.mkdir(parents=True)
    (config / "settings.json").write_text('{"theme": "dark"}\n')
    if not with_git:
        return
    remote, vault = lab / "vault-remote.git", lab / "source" / "vault"
    runner.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)])
    runner.run(["git", "init", "-q", "-b", "main", str(vault)])
    runner.run(["git", "-C", str(vault), "remote", "add", "origin", str(remote)])
    (vault / "Welcome.md").write_text("# Obsidian vault\n")


def build_config(lab: Path, cluster: DemoCluster | None, with_rsync: bool, with_git: bool) -> dict:
    config = {
        "version": 1,
        "destinations": {
            "local": {"kind": "local", "path": str(lab / "backups" / "local"), "medium": "ssd",
                      "description": "this machine's disk"},
            "nfs": {"kind": "local", "path": str(lab / "backups" / "nfs"), "medium": "nfs", "offsite": True,
                    "description": "a folder on this disk standing in for an NFS share on another machine"},
        },
        "policies": {"pg": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12,
                            "description": "a usual policy for database dumps"},
                     "standard": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2}},
        "targets": [],
    }
    if with_rsync:
        config["targets"].append(
            {"name": "files", "method": "rsync", "destinations": ["local", "nfs"], "policy": "standard", "interval": "1d",
             "rsync": {"source": str(lab / "source" / "projects"), "excludes": ["*.tmp", ".cache"]}})
    if with_rsync and with_git:
        config["targets"].append(
            {"name": "vault", "method": "vault", "destinations": ["local", "nfs"], "interval": "1d",
             "vault": {"path": str(lab / "source" / "vault"), "remotes": ["origin"], "branch": "main"}})
    if with_rsync:
        config["targets"].append(
            {"name": "claude-config", "method": "config", "destinations": ["local", "nfs"], "interval": "1w",
             "config": {"source": str(lab / "source" / "claude-config")}})
    if cluster:
        config["targets"].append({
            "name": "pg-shop", "method": "pg_dump", "destinations": ["local", "nfs"], "policy": "pg", "interval": "6h",
            "pg_dump": {"database": "shop", "address": "127.0.0.1", "port": cluster.port, "user": "backup",
                        "password": {"file": str(lab / "secrets" / "pg-backup.pass")}, "bin_dir": str(cluster.bindir),
                        "sanity_queries": ["SELECT 1 FROM customers WHERE city = 'Lyon' LIMIT 1"]},
        })
    return config


class Narrator:
    """What the demo says and runs: human output as it goes, or (for the agent, --json) each step's
    outcome gathered into one envelope (the steps' own envelopes are not printed)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.notes: list[str] = []
        self.steps: list[dict] = []
        self.lab: Path | None = None
        self.again: str | None = None

    def tell(self, text: str, **style) -> None:
        from bak.report import say

        if self.as_json:
            self.notes.append(text.strip())
        else:
            say(text, **style)

    def step(self, title: str, argv: list[str]) -> int:
        import contextlib
        import io
        import json

        from bak.cli import cli

        if not self.as_json:
            self.tell(f"\n$ bak {' '.join(argv)}", bold=True)
            self.tell(f"# {title}", dim=True)
            return _run(cli, argv)
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            code = _run(cli, [*argv, "--json"])
        env = json.loads(captured.getvalue())
        result = env["result"] if isinstance(env["result"], dict) else {}
        self.steps.append({"title": title, "command": "bak " + " ".join(argv), "exit_code": code, "ok": env["ok"],
                           **({"summary": result["summary"]} if isinstance(result.get("summary"), str) else {}),
                           "errors": [f"{e['code']}: {e['message']}"[:300] for e in env["errors"][:3]],
                           "errors_total": len(env["errors"]), "warnings": len(env["warnings"]),
                           **({"detail_file": env["detail"]["file"]} if env.get("detail") else {})})
        return code


def _run(cli, argv: list[str]) -> int:
    try:
        cli.main(args=argv, prog_name="bak", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def only_321_findings(targets: list[dict]) -> bool:
    """Whether every problem left is the 3-2-1 gap the lab has by design (two folders on one disk)."""
    return all(problem.startswith("3-2-1") for t in targets for problem in t["problems"])


def run(folder: Path | None, install: bool = False, narrator: Narrator | None = None) -> int:
    """The whole demo; `narrator` (human output by default) also keeps what each step gave."""
    narrator = narrator or Narrator(as_json=False)
    say, step = narrator.tell, narrator.step

    lab = Path(os.path.abspath(folder)) if folder else Path(__import__("tempfile").mkdtemp(prefix="bak-demo-"))
    try:
        lab.mkdir(parents=True, exist_ok=True)
        empty = not any(lab.iterdir())
    except OSError as exc:  # a file or device there, a folder above that is not one, no right to write
        raise BadInput(f"demo folder {lab}: {exc.strerror or exc}", where="--dir",
                       hint="Pass an empty or new folder as --dir.") from None
    if not empty:
        raise BadInput(f"demo folder {lab} is not empty", code="demo_folder_not_empty", hint="Pass an empty or new --dir.")
    os.environ["BAK_STATE_DIR"] = str(lab / "state")
    os.environ["BAK_CONFIG"] = str(lab / "config.yaml")
    narrator.lab = lab
    say(f"the demo lab: {lab}", bold=True)
    missing = missing_tools()
    if install and install_missing(missing, say):
        missing = missing_tools()
    for name, leaves_out in (("rsync", "the file, vault and config snapshots"), ("git", "the git vault"),
                             ("PostgreSQL server", "the PostgreSQL dump, restore and drill")):
        if name in missing:
            say(f"{name} not found: the demo leaves out {leaves_out}. To include it, run: "
                f"{install_command([missing[name]])}" + ("" if install else " (or add --install-missing)"), fg="yellow")
    with_rsync, with_git = "rsync" not in missing, "git" not in missing
    bindir = pg_bindir()
    cluster = None
    codes: list[int] = []
    try:
        if bindir:
            cluster = DemoCluster(lab / "postgresql", bindir)
            say(f"starting a throwaway PostgreSQL ({bindir.parent.name}) on 127.0.0.1:{cluster.port} ...")
            cluster.start()
            password = random_secrets.token_urlsafe(18)
            secret = lab / "secrets" / "pg-backup.pass"
            secret.parent.mkdir(mode=0o700)
            secret.write_text(password + "\n")
            secret.chmod(0o600)
            cluster.sql(f"CREATE ROLE backup LOGIN PASSWORD '{password}' CREATEDB; CREATE DATABASE shop;")
            cluster.sql(SAMPLE_SQL, "shop")
        if with_rsync:
            build_sources(lab, LocalRunner(), with_git)
        config = build_config(lab, cluster, with_rsync, with_git)
        (lab / "config.yaml").write_text(yaml.safe_dump({"state_dir": "state", **config}, sort_keys=False))
        say("destinations 'local' and 'nfs' are two folders on this machine's disk; 'nfs' stands in for an "
                   "NFS share on another machine. Its copies are simulated media: bak counts them as they are, one "
                   "medium on this host, so the 3-2-1 checks below report the gap a second disk and an off-site "
                   "copy would close.")
        names = {t["method"] for t in config["targets"]}
        made = [what for method, what in (("pg_dump", "a PostgreSQL dump streamed to both destinations"),
                                          ("rsync", "hard-linked rsync snapshots"),
                                          ("vault", "the vault committed, pushed and snapshotted"),
                                          ("config", "a copy of the config folder")) if method in names]
        codes.append(step("validate the config (every key checked against the schema)", ["config", "check"]))
        for round_number in range(3):
            codes.append(step(f"back up everything (run {round_number + 1} of 3): "
                              + ("; ".join(made) or "no target, without the tools named above"), ["create"]))
            if with_rsync:
                (lab / "source" / "projects" / "project1" / "notes1.md").write_text(f"# edited in round {round_number + 1}\n")
            time.sleep(1.1)
        checks = [what for method, what in (("pg_dump", "pg_restore full read"), ("rsync", "manifests"),
                                            ("vault", "git")) if method in names]
        codes.append(step("verify the newest backup on each destination: " + ", ".join(["sha256", *checks]),
                          ["verify"]))
        if with_rsync:
            codes.append(step("restore one file from the newest snapshot, beside the original",
                              ["restore", "--target", "files", "--file", "project1/notes1.md",
                               "--into", str(lab / "restored-files")]))
        if cluster:
            codes.append(step("restore beside the original (a new database; never over it)",
                              ["restore", "--target", "pg-shop", "--no-owner"]))
        drills = [what for method, what in (("pg_dump", "scratch database (row counts, sanity query)"),
                                            ("rsync", "scratch folders (every file against its manifest)"))
                  if method in names]
        codes.append(step("restore drills: " + (" and ".join(drills) + ", removed after" if drills else "none to run"),
                          ["drill"]))
        codes.append(step("what retention would remove (dry run)", ["prune", "--dry-run"]))
        codes.append(step("every backup, per destination", ["list"]))
        codes.append(expected_gap(step("3-2-1 per data item and advice (the simulated media show as one)",
                                       ["wizard", "strategy", "--measure"]), "strategy"))
        codes.append(step("a usual policy (7 daily, 4 weekly, 12 monthly, 2 yearly) on 400 days of 6-hourly dumps",
                          ["prune", "--simulate", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12",
                           "--keep-yearly", "2", "--every", "6h", "--days", "400"]))
        codes.append(step("the journal of everything above", ["log"]))
        codes.append(expected_gap(step("the dashboard: age, size, 3-2-1 copies, last verify and drill, free space",
                                       ["status"]), "status"))
    finally:
        if cluster:
            cluster.stop()
    failed = [c for c in codes if c != 0]
    say(f"\ndemo {'finished' if not failed else 'finished with problems'}: lab left in {lab} "
        f"(config.yaml, backups/, state/journal.sqlite)", bold=True, fg="green" if not failed else "red")
    narrator.again = again_command(lab)
    say("look at the lab again:")
    if narrator.as_json:
        return 1 if failed else 0
    import click

    click.echo(f"  {narrator.again}")  # one line, to copy whole
    return 1 if failed else 0


def expected_gap(code: int, command: str) -> int:
    """Exit 1 of status or strategy is expected when all it found is the lab's 3-2-1 gap."""
    if code != 1:
        return code
    from bak import config, strategy
    from bak.status import status

    lab_config = config.load(Path(os.environ["BAK_CONFIG"]))
    if command == "strategy":
        found = strategy.analyse(lab_config).errors
        return 0 if all(e["code"] == "rule_321" for e in found) else code
    return 0 if only_321_findings(status(lab_config).result["targets"]) else code


def again_command(lab: Path) -> str:
    """The command that shows the lab's dashboard again: its config names its state folder (state_dir)."""
    from bak import front

    config_file = lab / "config.yaml"
    if front.slash_prefix():
        return front.command(f"status --config {shlex.quote(str(config_file))}")
    bak = "bak" if shutil.which("bak") else f"{shlex.quote(sys.executable)} -m bak"
    if os.name == "nt":
        return f'{bak} status --config "{config_file}"'
    return f"{bak} status --config {shlex.quote(str(config_file))}"


def outcome(narrator: Narrator, code: int) -> dict:
    """The demo as one result (bak demo --json): where the lab is, each step's outcome, how to look again."""
    lab = narrator.lab
    return {"lab": str(lab) if lab else None, "config": str(lab / "config.yaml") if lab else None,
            "state_dir": str(lab / "state") if lab else None, "passed": code == 0, "steps": narrator.steps,
            "notes": narrator.notes, "again": narrator.again}
