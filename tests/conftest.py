"""Fixtures: a loopback-only network guard, a real sshd and a real PostgreSQL 15 on 127.0.0.1.

A missing system tool fails the test, never skips it (`bash tests/run.sh` installs them all).
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))

from bak.demo import free_port, pg_bindir  # noqa: E402  (the demo's own helpers, shared with the fixtures)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# --- the suite leaves nothing behind -------------------------------------------------------
# Everything the suite and the tools it starts write goes under one folder of this run (removed at the
# end): temp files (TMPDIR, also pytest's own), restic's cache, and the XDG folders a tool might use in
# $HOME. The folder is traversable (0711) so the postgres OS user reaches the clusters kept there.
SESSION_TMP = Path(tempfile.mkdtemp(prefix="bak-tests-"))
os.chmod(SESSION_TMP, 0o711)
for _sub, _var in (("tmp", "TMPDIR"), ("cache", "XDG_CACHE_HOME"), ("config", "XDG_CONFIG_HOME"),
                   ("data", "XDG_DATA_HOME"), ("state", "XDG_STATE_HOME"), ("restic-cache", "RESTIC_CACHE_DIR")):
    (SESSION_TMP / _sub).mkdir()
    os.environ[_var] = str(SESSION_TMP / _sub)
os.chmod(SESSION_TMP / "tmp", 0o1777)
tempfile.tempdir = None  # tempfile reads TMPDIR again
HOME = Path.home()
_SYSTEM_TMP = Path("/tmp")
_HOME_SKIP = {".pyenv", ".rustup", ".cargo", ".m2", ".npm", ".cache", ".claude", ".claude.json"}


# At exit rather than at the session's end: a run stopped by a usage error or Ctrl-C removes it too.
atexit.register(shutil.rmtree, SESSION_TMP, True)


def _entries() -> set[str]:
    """Top-level names in the filesystem root, the system temp folder and our TMPDIR, and $HOME two levels deep."""
    # (another run of this suite has a bak-tests-* folder of its own, which it removes)
    found = {f"/tmp/{n}" for n in os.listdir(_SYSTEM_TMP) if not n.startswith("bak-tests-")} | \
        {f"TMPDIR/{n}" for n in os.listdir(SESSION_TMP / "tmp") if not n.startswith("pytest-of-")} | \
        {f"/{n}" for n in os.listdir("/")}  # a path drawn by a fuzzer (/dev0null) must not become a real folder
    for entry in HOME.iterdir():
        found.add(f"~/{entry.name}")
        if entry.is_dir() and not entry.is_symlink() and entry.name not in _HOME_SKIP:
            found |= {f"~/{entry.name}/{n}" for n in os.listdir(entry)}
    return found


@pytest.fixture(autouse=True)
def leaves_nothing_behind():
    """A test that leaves a new entry in the system temp folder, our TMPDIR or $HOME fails.
    (Session fixtures keep their folders in SESSION_TMP itself, or in pytest's tmp_path_factory.)"""
    if os.environ.get("BAK_TESTS_SHARED_TMP") and not IN_CI:
        yield  # a developer's machine where other jobs write to /tmp meanwhile; CI always guards
        return
    before = _entries()
    yield
    new = sorted(_entries() - before)
    assert not new, f"the test left files behind: {new}"


def unavailable(message: str) -> None:
    """What a test needs is not on this machine: a failure, never a skip (the README's test command installs it)."""
    pytest.fail(message)


def need(*tools: str) -> None:
    """Each system tool the test needs is there (else `unavailable`)."""
    missing = [t for t in tools if not (shutil.which(t) or Path(t).exists())]
    if missing:
        unavailable(f"missing system tools: {', '.join(missing)} (run: bash tests/run.sh)")


# --- network guard -------------------------------------------------------------------------
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check_address(sock, address) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise AssertionError(f"test tried to connect to non-loopback host {host!r}") from None
        return
    if not ip.is_loopback:
        raise AssertionError(f"test tried to connect to non-loopback address {host}")


def _guarded_connect(self, address):
    _check_address(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_address(self, address)
    return _real_connect_ex(self, address)


_real_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _is_loopback_literal(host):
        raise AssertionError(f"test tried to resolve non-loopback host {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _is_loopback_literal(host) -> bool:
    try:
        return ipaddress.ip_address(host if isinstance(host, str) else host.decode()).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


# --- isolated bak state --------------------------------------------------------------------
@pytest.fixture
def bak_home(tmp_path, monkeypatch):
    """Private state and config locations for one test."""
    state = tmp_path / "state"
    monkeypatch.setenv("BAK_STATE_DIR", str(state))
    monkeypatch.setenv("BAK_CONFIG", str(tmp_path / "config.yaml"))
    from bak import secrets

    monkeypatch.setattr(secrets, "_KNOWN", set())
    return tmp_path


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class CliResult:
    code: int
    envelope: dict | None
    stdout: str
    stderr: str


def run_cli(*args: str, stdin: str | None = None) -> CliResult:
    """Run `bak ARGS --json` in-process and parse its envelope."""
    from click.testing import CliRunner

    from bak.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, [*args, "--json"], input=stdin, catch_exceptions=False)
    stdout = result.stdout
    env = json.loads(stdout) if stdout.strip() else None
    if env is not None:
        check_envelope(env)
    return CliResult(result.exit_code, env, stdout, result.stderr if result.stderr_bytes is not None else "")


def check_envelope(env: dict) -> None:
    """Every envelope a test sees must match envelope.json and its command's result schema."""
    from jsonschema import Draft202012Validator

    from bak.report import _SCHEMAS, result_schema

    Draft202012Validator(json.loads((_SCHEMAS / "envelope.json").read_text())).validate(env)
    if env["result"] is not None:
        Draft202012Validator(result_schema(env["command"])).validate(env["result"])


def bak_subprocess(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """`bak` as a real process (for SIGKILL and lock tests)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "bak", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


# --- sshd ------------------------------------------------------------------------------------
def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class SSHServer:
    port: int
    root: Path
    client_key: Path
    host_pub: Path
    user: str
    proc: subprocess.Popen | None = None
    config_path: Path | None = None
    path_dirs: list[str] = field(default_factory=list)

    @property
    def host_entry(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    def known_hosts_line(self) -> str:
        return f"{self.host_entry} {' '.join(self.host_pub.read_text().split()[:2])}\n"

    def host_config(self, known_hosts: Path | None = None) -> dict:
        host = {"address": "127.0.0.1", "port": self.port, "user": self.user, "key_file": str(self.client_key),
                "connect_timeout": 5}
        if known_hosts:
            host["known_hosts"] = str(known_hosts)
        return host

    def trust(self, path: Path) -> Path:
        path.write_text(self.known_hosts_line())
        return path

    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(self.host_pub)], capture_output=True, text=True, check=True)
        return out.stdout.split()[1]

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config_path)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"))
        wait_port(self.port)

    def stop(self) -> None:
        """SIGKILL the listener and every per-connection child, as a crash of the host would."""
        if self.proc and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (read from /proc, no psutil needed)."""
    pending, seen = [pid], []
    while pending:
        current = pending.pop()
        seen.append(current)
        pending.extend(_children(current))
    for victim in seen:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _make_sshd(root: Path, path_dirs: list[str] | None = None, env: dict[str, str] | None = None) -> SSHServer:
    need("/usr/sbin/sshd", "ssh-keygen")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key")], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    # The test interpreter's folder first: stand-ins are Python scripts that need its packages.
    env_path = ":".join([*(path_dirs or []), str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin",
                         "/usr/sbin", "/sbin"])
    extra_env = "".join(f" {k}={v}" for k, v in (env or {}).items())
    config = root / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {root / 'host_key'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {root / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
SetEnv PATH={env_path}{extra_env}
MaxSessions 50
MaxStartups 50:30:100
LogLevel ERROR
""")
    server = SSHServer(port=port, root=root, client_key=root / "client_key", host_pub=root / "host_key.pub",
                       user=user, config_path=config, path_dirs=list(path_dirs or []))
    server.start()
    return server


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 for the whole session (don't kill it in a test)."""
    server = _make_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def private_sshd(tmp_path):
    """An sshd of the test's own, that the test may kill and restart."""
    server = _make_sshd(tmp_path / "sshd-own")
    yield server
    server.stop()


# --- PostgreSQL ------------------------------------------------------------------------------
@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    os_user: str | None
    superuser: str = "postgres"
    password: str = "s3cret-Pass!word"
    log: Path = None  # type: ignore[assignment]

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.os_user, "--", *argv] if self.os_user else argv

    def start(self) -> None:
        subprocess.run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log),
                                       "-w", "-t", "30", "-o", f"-p {self.port} -k {self.datadir}", "start"]),
                       check=True, stdout=subprocess.DEVNULL)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"]),
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.superuser,
                              "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             env={**os.environ, "PGPASSWORD": self.password}, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr)
        return out.stdout


def _make_postgres() -> PostgresServer:
    bindir = pg_bindir()
    if bindir is None:
        need("initdb")
    root = Path(tempfile.mkdtemp(prefix="bak-pg-", dir=SESSION_TMP))
    os_user = None
    if os.getuid() == 0:
        os_user = "postgres"
        try:
            owner = pwd.getpwnam(os_user)
        except KeyError:
            pytest.fail("running as root needs the `postgres` OS user (apt-get install postgresql creates it)")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    os.chmod(root, 0o755)
    datadir = root / "data"
    server = PostgresServer(bindir=bindir, datadir=datadir, port=free_port(), os_user=os_user, log=root / "pg.log")
    pwfile = root / "pw"
    pwfile.write_text(server.password + "\n")
    if os_user:
        os.chown(pwfile, pwd.getpwnam(os_user).pw_uid, -1)
    subprocess.run(server._as_owner([str(bindir / "initdb"), "-D", str(datadir), "-U", server.superuser, "-A", "scram-sha-256",
                                     f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8", "--locale=C"]),
                   check=True, stdout=subprocess.DEVNULL)
    pwfile.unlink()
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write("listen_addresses = '127.0.0.1'\nfsync = off\nfull_page_writes = off\nsynchronous_commit = off\n")
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL cluster on 127.0.0.1 for the whole session."""
    server = _make_postgres()
    yield server
    server.stop("immediate")
    shutil.rmtree(server.datadir.parent, ignore_errors=True)


# --- a small full disk -----------------------------------------------------------------------
def mount_tmpfs(point: Path, size: str) -> Path:
    """A tmpfs of `size` at a new folder `point`: a filesystem of its own (needs root). Unmount with umount -l."""
    need("mount", "umount")
    point.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        unavailable(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    return point


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs, to fill up for real."""
    mount_point = mount_tmpfs(tmp_path / "tiny", "1m")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


# --- restic servers: rclone's REST server and an S3 endpoint (moto), on loopback --------------------
@dataclass
class ResticServer:
    """A server restic talks to over HTTP on 127.0.0.1; the test may kill and start it again."""

    argv: list[str]
    port: int
    root: Path
    prefix: str  # `rest:` or `s3:` URL of the server, before a repository's own path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"),
                                     start_new_session=True)
        wait_port(self.port, timeout=30)

    def stop(self) -> None:
        """SIGKILL, as a crash or a pulled cable would."""
        if self.proc and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait()

    def repository(self, name: str) -> str:
        return f"{self.prefix}{name}"


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory):
    """`rclone serve restic` (Debian's rclone) on 127.0.0.1: one repository per URL path."""
    need("rclone", "restic")
    root = tmp_path_factory.mktemp("rest")
    port = free_port()
    server = ResticServer(["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}", str(root / "data")], port, root,
                          f"rest:http://127.0.0.1:{port}/")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3-compatible server (moto's, from the test extra) on 127.0.0.1; restic addresses it path-style."""
    need("restic")
    try:
        import moto.server  # noqa: F401  (the test extra: pip install -e '.[test]')
    except ImportError:
        unavailable("moto[server] is missing (run: bash tests/run.sh)")
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    server = ResticServer([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, root,
                          f"s3:http://127.0.0.1:{port}/")
    server.start()
    yield server
    server.stop()
