"""`bak demo`: a sandbox homelab in one folder, backed up, verified, restored, drilled and pruned.

Everything lives under the lab folder and loopback: a throwaway PostgreSQL cluster on
127.0.0.1 (when its binaries exist), destinations as folders, bak's state in lab/state.
"""

from __future__ import annotations

import os
import secrets as random_secrets
import shutil
import socket
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


def build_sources(lab: Path, runner: LocalRunner) -> None:
    """A file tree, a config folder and a git vault with a local bare remote, all inside the lab."""
    files = lab / "source" / "projects"
    for index in range(40):
        folder = files / f"project{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"notes{index}.md").write_text(f"# note {index}\n" + "lorem ipsum " * (index * 20))
    (files / "scratch.tmp").write_text("excluded")
    config = lab / "source" / "claude-config"
    config.mkdir(parents=True)
    (config / "settings.json").write_text('{"theme": "dark"}\n')
    remote, vault = lab / "vault-remote.git", lab / "source" / "vault"
    runner.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)])
    runner.run(["git", "init", "-q", "-b", "main", str(vault)])
    runner.run(["git", "-C", str(vault), "remote", "add", "origin", str(remote)])
    (vault / "Welcome.md").write_text("# Obsidian vault\n")


def build_config(lab: Path, cluster: DemoCluster | None, with_files: bool) -> dict:
    config = {
        "version": 1,
        "destinations": {
            "local": {"kind": "local", "path": str(lab / "backups" / "local"), "medium": "ssd",
                      "description": "this machine's disk"},
            "nfs": {"kind": "local", "path": str(lab / "backups" / "nfs"), "medium": "nfs", "offsite": True,
                    "description": "stands in for the NFS share of VM 104"},
        },
        "policies": {"pg": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12,
                            "description": "the spec's pg_dump policy"},
                     "standard": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2}},
        "targets": [] if not with_files else [
            {"name": "files", "method": "rsync", "destinations": ["local", "nfs"], "policy": "standard", "interval": "1d",
             "rsync": {"source": str(lab / "source" / "projects"), "excludes": ["*.tmp", ".cache"]}},
            {"name": "vault", "method": "vault", "destinations": ["local", "nfs"], "interval": "1d",
             "vault": {"path": str(lab / "source" / "vault"), "remotes": ["origin"], "branch": "main"}},
            {"name": "claude-config", "method": "config", "destinations": ["local", "nfs"], "interval": "1w",
             "config": {"source": str(lab / "source" / "claude-config")}},
        ],
    }
    if cluster:
        config["targets"].append({
            "name": "pg-shop", "method": "pg_dump", "destinations": ["local", "nfs"], "policy": "pg", "interval": "6h",
            "pg_dump": {"database": "shop", "address": "127.0.0.1", "port": cluster.port, "user": "backup",
                        "password": {"file": str(lab / "secrets" / "pg-backup.pass")}, "bin_dir": str(cluster.bindir),
                        "sanity_queries": ["SELECT 1 FROM customers WHERE city = 'Lyon' LIMIT 1"]},
        })
    return config


def step(title: str, argv: list[str]) -> int:
    import click

    from bak.cli import cli

    click.secho(f"\n$ bak {' '.join(argv)}", bold=True)
    click.secho(f"# {title}", dim=True)
    try:
        cli.main(args=argv, prog_name="bak", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def run(folder: Path | None) -> int:
    import click

    lab = Path(folder) if folder else Path(__import__("tempfile").mkdtemp(prefix="bak-demo-"))
    lab.mkdir(parents=True, exist_ok=True)
    if any(lab.iterdir()):
        raise BadInput(f"demo folder {lab} is not empty", code="demo_folder_not_empty", hint="Pass an empty or new --dir.")
    os.environ["BAK_STATE_DIR"] = str(lab / "state")
    os.environ["BAK_CONFIG"] = str(lab / "config.yaml")
    click.secho(f"bak demo lab: {lab}", bold=True)
    bindir = pg_bindir()
    cluster = None
    codes: list[int] = []
    try:
        if bindir:
            cluster = DemoCluster(lab / "postgresql", bindir)
            click.echo(f"starting a throwaway PostgreSQL ({bindir.parent.name}) on 127.0.0.1:{cluster.port} ...")
            cluster.start()
            password = random_secrets.token_urlsafe(18)
            secret = lab / "secrets" / "pg-backup.pass"
            secret.parent.mkdir(mode=0o700)
            secret.write_text(password + "\n")
            secret.chmod(0o600)
            cluster.sql(f"CREATE ROLE backup LOGIN PASSWORD '{password}' CREATEDB; CREATE DATABASE shop;")
            cluster.sql(SAMPLE_SQL, "shop")
        else:
            click.secho("PostgreSQL server binaries not found (apt-get install postgresql): the demo shows the rest.",
                        fg="yellow")
        with_files = bool(shutil.which("rsync") and shutil.which("git"))
        if with_files:
            build_sources(lab, LocalRunner())
        else:
            click.secho("rsync or git not found (apt-get install rsync git): the demo leaves out file, vault "
                        "and config snapshots.", fg="yellow")
        (lab / "config.yaml").write_text(yaml.safe_dump(build_config(lab, cluster, with_files), sort_keys=False))
        codes.append(step("validate the config (every key checked against the schema)", ["config", "check"]))
        for round_number in range(3):
            codes.append(step(f"back up everything (run {round_number + 1} of 3): dumps streamed to both destinations, "
                              "hard-linked rsync snapshots, the vault committed and pushed", ["create"]))
            if with_files:
                (lab / "source" / "projects" / "project1" / "notes1.md").write_text(f"# edited in round {round_number + 1}\n")
            time.sleep(1.1)
        codes.append(step("verify the newest backup on each destination: sha256, pg_restore full read, manifests, git",
                          ["verify"]))
        if with_files:
            codes.append(step("restore one file from the newest snapshot, beside the original",
                              ["restore", "--target", "files", "--file", "project1/notes1.md",
                               "--into", str(lab / "restored-files")]))
        if cluster:
            codes.append(step("restore beside the original (a new database; never over it)",
                              ["restore", "--target", "pg-shop", "--no-owner"]))
        codes.append(step("restore drills: scratch database (row counts, sanity query) and scratch folders (every "
                          "file against its manifest), removed after", ["drill"]))
        codes.append(step("what retention would remove (dry run)", ["prune", "--dry-run"]))
        codes.append(step("every backup, per destination", ["list"]))
        codes.append(step("3-2-1 per data item and advice", ["wizard", "strategy", "--measure"]))
        codes.append(step("the spec's standard policy on 400 days of 6-hourly dumps",
                          ["prune", "--simulate", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12",
                           "--keep-yearly", "2", "--every", "6h", "--days", "400"]))
        codes.append(step("the journal of everything above", ["log"]))
        codes.append(step("the dashboard: age, size, 3-2-1 copies, last verify and drill, free space", ["status"]))
    finally:
        if cluster:
            cluster.stop()
    failed = [c for c in codes if c != 0]
    click.secho(f"\ndemo {'finished' if not failed else 'finished with problems'}: lab left in {lab} "
                f"(config.yaml, backups/, state/journal.sqlite)", bold=True, fg="green" if not failed else "red")
    return 1 if failed else 0
