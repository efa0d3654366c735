"""Docker volumes against a real container engine: Debian's podman with runc, on this machine and on
the loopback SSH host, driven through the podman CLI and through the docker CLI.

`docker` is the first one on PATH: Docker's own client when installed (it talks to podman's
Docker-compatible API, `podman system service`, through DOCKER_HOST), else podman-docker's `docker`.
The engine keeps everything in the session's temp folder (its own containers.conf and storage.conf,
vfs storage, no network) but two things podman 4.3 as root does not let a config move: its image
blob cache (/var/lib/containers/cache) and netavark's run folder (/run/containers/networks). Its
one image is a busybox-static rootfs imported offline; containers, volumes and image are removed
at the end.

What a restore gave back is read with os.lstat and os.getxattr, what a tarball holds with Python's
tarfile: neither is the GNU tar that wrote and extracted it. The stand-in `docker` (tests/standins)
is used for one fault only: an engine that fails to stop a running container (a real engine stops
any container it runs, killing it once the grace time is up).
"""

import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, _make_sshd, bak_subprocess, need, run_cli, write_config

DATA_UID = 999  # the uid database images (postgres, mysql, redis) run as
# A POSIX ACL as the kernel stores it (system.posix_acl_access): user::rw- user:1234:r-- group::r-- mask::r-- other::---
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in
                                      [(1, 6, 0xFFFFFFFF), (2, 4, 1234), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
                                       (0x20, 0, 0xFFFFFFFF)])
# PID 1 of the test containers: leaves at once on SIGTERM, as a well-behaved service does.
SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
_names = itertools.count(1)


@dataclass
class Engine:
    root: Path
    env: dict
    docker: str  # which docker CLI runs: "Docker's client" or "podman-docker"

    def podman(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["podman", *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120)
        if check and out.returncode:
            raise AssertionError(f"podman {' '.join(args)}: {out.stderr}")
        return out.stdout

    def mountpoint(self, volume: str) -> Path:
        return Path(self.podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).strip())

    def running(self, container: str) -> bool:
        return self.podman("inspect", "--format", "{{.State.Running}}", container).strip() == "true"

    def volumes(self) -> set[str]:
        return set(self.podman("volume", "ls", "--format", "{{.Name}}").split())


def _wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with socket.socket(socket.AF_UNIX) as sock:
                if sock.connect_ex(str(path)) == 0:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"podman system service did not listen on {path}")


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """podman with runc, its storage and state in a temp folder; one imported image; removed at the end."""
    need("podman", "runc", "conmon", "/bin/busybox", "docker", "tar", "find", "sha256sum")
    root = tmp_path_factory.mktemp("engine")
    (root / "containers.conf").write_text(f"""\
[containers]
default_ulimits = []
netns = "none"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "none"
tmp_dir = "{root}/libpod"
image_copy_tmp_dir = "{root}/tmp"
[network]
network_config_dir = "{root}/networks"
""")
    (root / "storage.conf").write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    (root / "tmp").mkdir()
    env = {"CONTAINERS_CONF": str(root / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
           "DOCKER_HOST": f"unix://{root}/podman.sock"}
    docker = "podman-docker" if Path(shutil.which("docker")).read_bytes()[:2] == b"#!" else "Docker's client"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", env["DOCKER_HOST"]],
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = Engine(root, env, docker)
    try:
        rootfs = root / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
        for tool in ("sh", "sleep"):
            (rootfs / "bin" / tool).symlink_to("busybox")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(root / "rootfs.tar"), "."], check=True)
        found.podman("import", "-q", str(root / "rootfs.tar"), "localhost/bak-mini:1")
        _wait_for(root / "podman.sock")
        yield found
    finally:
        service.terminate()
        service.wait(timeout=30)
        found.podman("rm", "--all", "--force", "--time", "0", check=False)
        found.podman("volume", "rm", "--all", "--force", check=False)
        found.podman("rmi", "--all", "--force", check=False)  # not `system reset`: it writes to ~/.config/containers
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def engine_host(engine, tmp_path_factory):
    """The loopback SSH host, its commands seeing the same engine (the env passed through sshd)."""
    server = _make_sshd(tmp_path_factory.mktemp("engine-sshd"), env=engine.env)
    yield server
    server.stop()


@dataclass
class App:
    """A running container and the volume it uses, as a database's would be."""

    container: str
    volume: str
    path: Path  # the volume's folder on this machine


@pytest.fixture
def app(engine, monkeypatch):
    for key, value in engine.env.items():
        monkeypatch.setenv(key, value)
    serial = f"{os.getpid()}-{next(_names)}"
    made = App(f"db{serial}", f"dbdata{serial}", Path())
    engine.podman("volume", "create", made.volume)
    engine.podman("run", "-d", "--name", made.container, "-v", f"{made.volume}:/data", "localhost/bak-mini:1", *SERVICE)
    made.path = engine.mountpoint(made.volume)  # filled after the container's first mount (podman sets the root's owner then)
    fill_volume(made.path)
    before = engine.volumes()
    yield made
    engine.podman("rm", "--force", "--time", "0", made.container, check=False)
    for volume in engine.volumes() - before | {made.volume}:
        engine.podman("volume", "rm", "--force", volume, check=False)


def fill_volume(path: Path) -> None:
    """What a database volume holds: a 0700 folder owned by uid 999, modes, a symlink, a hard link,
    an empty folder, a sparse file, a setuid file, an xattr and an ACL, a fixed old mtime."""
    pgdata = path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "base.bin").write_bytes(os.urandom(300_000))
    (pgdata / "empty").mkdir()
    (pgdata / "current").symlink_to("PG_VERSION")
    os.link(pgdata / "PG_VERSION", path / "hardlinked")
    with open(path / "sparse.img", "wb") as handle:
        handle.truncate(16 << 20)
        handle.seek(1 << 20)
        handle.write(b"x" * 4096)
    (path / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(path / "tool", 0o4755)
    os.setxattr(pgdata / "PG_VERSION", "user.origin", b"bak-test")
    os.setxattr(pgdata / "base.bin", "system.posix_acl_access", ACL)
    for entry in [pgdata, pgdata / "PG_VERSION", pgdata / "base.bin", pgdata / "empty", path]:
        os.chown(entry, DATA_UID, DATA_UID)
    os.lchown(pgdata / "current", DATA_UID, DATA_UID)
    os.chmod(pgdata / "PG_VERSION", 0o600)
    os.chmod(pgdata / "empty", 0o750)
    os.utime(pgdata / "PG_VERSION", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.chmod(pgdata, 0o700)
    os.chmod(path, 0o700)


def tree(path: Path) -> dict:
    """Every entry below `path` (and `path` itself as "."), read with os.lstat: what a restore must give back."""
    entries = {}
    for entry in [path, *sorted(path.rglob("*"))]:
        st = os.lstat(entry)
        rel = str(entry.relative_to(path)) if entry != path else "."
        row = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "owner": (st.st_uid, st.st_gid)}
        if stat.S_ISLNK(st.st_mode):
            row["target"] = os.readlink(entry)
        else:
            row["xattrs"] = {name: os.getxattr(entry, name) for name in sorted(os.listxattr(entry))}
        if stat.S_ISREG(st.st_mode):
            row.update(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=hashlib.sha256(entry.read_bytes()).hexdigest())
        entries[rel] = row
    return entries


def lab(home: Path, app: App, cli: str, *, host: str = "local", hosts: dict | None = None,
        destinations: dict | None = None, **options) -> None:
    data = {"version": 1, "destinations": destinations or {"nfs": {"kind": "local", "path": str(home / "dest")}},
            "targets": [{"name": "db", "method": "docker_volume", "host": host, "destinations": list(destinations or ["nfs"]),
                         "interval": "1d", "docker_volume": {"container": app.container, "volume": app.volume, "cli": cli,
                                                             "stop_containers": True, **options}}]}
    if hosts:
        data["hosts"] = hosts
    write_config(home / "config.yaml", data)


def backups(home: Path, folder: str = "docker-volumes/db") -> list[Path]:
    return sorted(p for p in (home / "dest" / folder).glob("*.tar.gz"))


def tar_processes(mountpoint: Path) -> list[int]:
    """Running tar processes reading or writing `mountpoint` (found in /proc, as a watcher would)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"tar") and os.fsencode(str(mountpoint)) in args:
            found.append(int(cmdline.parent.name))
    return found


def wait_for_tar(mountpoint: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = tar_processes(mountpoint)
        if pids:
            return pids[0]
        time.sleep(0.01)
    raise AssertionError(f"no tar on {mountpoint} started")


@pytest.mark.parametrize("where", ["local", "ssh"])
@pytest.mark.parametrize("cli", ["docker", "podman"])
def test_create_verify_restore_drill(engine, engine_host, app, bak_home, cli, where):
    if where == "ssh":
        known = engine_host.trust(bak_home / "known_hosts")
        lab(bak_home, app, cli, host="engine", hosts={"engine": engine_host.host_config(known)})
    else:
        lab(bak_home, app, cli)
    original = tree(app.path)

    created = run_cli("create")
    assert created.code == 0, created.envelope
    entry = created.envelope["result"]["targets"][0]
    assert entry["name"].startswith(f"docker-vol-{app.container}-{app.volume}-") and entry["stopped"] == [app.container]
    assert engine.running(app.container)
    [archive] = backups(bak_home)
    with tarfile.open(archive, "r:gz") as read:  # Python's reader, not the tar that wrote it
        members = {m.name: m for m in read.getmembers()}
    assert (members["./pgdata"].uid, members["./pgdata"].mode) == (DATA_UID, 0o700)
    assert members["./pgdata/current"].issym() and members["./pgdata/current"].linkname == "PG_VERSION"
    assert members["./pgdata/empty"].isdir() and members["./tool"].mode == 0o4755
    assert members["./pgdata/PG_VERSION"].pax_headers["SCHILY.xattr.user.origin"] == "bak-test"
    assert members["./sparse.img"].issparse()

    verified = run_cli("verify")
    assert verified.code == 0, verified.envelope
    assert verified.envelope["result"]["checked"][0]["entries"] == len(original)

    restored = run_cli("restore", "--target", "db")
    assert restored.code == 0, restored.envelope
    volume = restored.envelope["result"]["volume"]
    assert volume.startswith(f"{app.volume}-restored-") and restored.envelope["result"]["replaced"] is False
    copy = engine.mountpoint(volume)
    assert tree(copy) == original
    assert os.lstat(copy / "sparse.img").st_blocks * 512 < 1 << 20  # holes stay holes

    drilled = run_cli("drill")
    assert drilled.code == 0, drilled.envelope
    drill = drilled.envelope["result"]["drills"][0]
    assert drill["passed"] and drill["checks"][0]["check"].startswith(f"{len(original)} entries restored as archived")
    assert "owner" in drill["checks"][0]["check"]
    assert drill["scratch_volume"] not in engine.volumes()
    assert engine.running(app.container)


def test_drill_finds_what_a_restore_did_not_give_back(engine, app, bak_home, monkeypatch):
    """A restore that loses modes, owners or files (here: a tar that drops owners and
    permissions, as a non-root extract does) fails the drill, entry by entry."""
    lab(bak_home, app, "podman")
    assert run_cli("create").code == 0
    from bak.methods import docker_volume

    lossy = docker_volume.tar_extract_argv
    monkeypatch.setattr(docker_volume, "tar_extract_argv",
                        lambda mountpoint, full: [*lossy(mountpoint, full)[:-2], "--no-same-owner",
                                                  "--exclude=pgdata/empty", "-xzf", "-"])
    drilled = run_cli("drill")
    assert drilled.code == 1
    differences = drilled.envelope["result"]["drills"][0]["checks"][0]["differences"]
    assert "pgdata/empty" in differences
    assert any(d.startswith("pgdata/PG_VERSION (owner 0:0, was 999:999") for d in differences), differences
    assert not {v for v in engine.volumes() if v.startswith("bak-drill-")}


def test_stop_timeout_is_the_grace_a_container_gets(engine, app, bak_home):
    """busybox's sleep as PID 1 ignores SIGTERM: the engine kills it when the configured grace is up."""
    stubborn = f"{app.container}-stubborn"
    engine.podman("run", "-d", "--name", stubborn, "-v", f"{app.volume}:/data", "localhost/bak-mini:1", "sleep", "100000")
    try:
        lab(bak_home, app, "podman", stop_timeout=2)
        started = time.monotonic()
        created = run_cli("create")
        took = time.monotonic() - started
        assert created.code == 0, created.envelope
        assert sorted(created.envelope["result"]["targets"][0]["stopped"]) == sorted([app.container, stubborn])
        assert 2 <= took < 10
        assert engine.running(app.container) and engine.running(stubborn)
    finally:
        engine.podman("rm", "--force", "--time", "0", stubborn, check=False)


def test_forced_restore_keeps_a_safety_copy_and_restarts_the_container(engine, app, bak_home):
    lab(bak_home, app, "docker")
    assert run_cli("create").code == 0
    backed_up = tree(app.path)
    (app.path / "written-after-the-backup").write_text("only in the safety copy")
    (app.path / "pgdata" / "PG_VERSION").write_text("16\n")

    refused = run_cli("restore", "--target", "db", "--into", app.volume)
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "would_overwrite"
    forced = run_cli("restore", "--target", "db", "--into", app.volume, "--force")
    assert forced.code == 0, forced.envelope
    result = forced.envelope["result"]
    assert result["replaced"] is True and result["stopped"] == [app.container]
    assert engine.running(app.container)
    assert tree(app.path) == backed_up
    [safety] = sorted((bak_home / "dest" / "safety" / "db").glob("*.tar.gz"))
    assert (safety.parent / (safety.name + ".protected")).exists()
    with tarfile.open(safety, "r:gz") as read:
        assert read.extractfile("./written-after-the-backup").read() == b"only in the safety copy"
        assert read.extractfile("./pgdata/PG_VERSION").read() == b"16\n"
    listed = run_cli("list")
    assert [b["name"] for b in listed.envelope["result"]["backups"]] == [p.name for p in backups(bak_home)]


def test_forced_restore_removes_nothing_the_safety_copy_lacks(engine, app, bak_home):
    """tar skips sockets: a volume holding one is not emptied, and its container runs again."""
    lab(bak_home, app, "podman")
    assert run_cli("create").code == 0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(app.path / "mysqld.sock"))
    before = tree(app.path)
    refused = run_cli("restore", "--target", "db", "--into", app.volume, "--force")
    assert refused.code == 3, refused.envelope
    error = refused.envelope["errors"][0]
    assert error["code"] == "safety_copy_incomplete" and "mysqld.sock" in error["message"]
    assert tree(app.path) == before
    assert engine.running(app.container)


def test_damaged_copies_fail_verify_by_name(engine, app, bak_home):
    lab(bak_home, app, "podman", destinations={"nfs": {"kind": "local", "path": str(bak_home / "dest")},
                                                "usb": {"kind": "local", "path": str(bak_home / "usb")}})
    assert run_cli("create").code == 0
    [flipped] = backups(bak_home)
    [truncated] = sorted((bak_home / "usb" / "docker-volumes" / "db").glob("*.tar.gz"))
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size - 1000])
    verified = run_cli("verify")
    assert verified.code == 1
    rows = {row["store"]: row for row in verified.envelope["result"]["checked"]}
    assert rows["nfs"]["checksum"] == "mismatch" and rows["usb"]["checksum"] == "mismatch"
    assert rows["usb"]["format"] == "failed"
    assert {e["where"] for e in verified.envelope["errors"]} == {f"nfs:{flipped.name}", f"usb:{truncated.name}"}


def test_sidecar_and_archive_damaged_together_still_fail_verify(engine, app, bak_home):
    """A flipped byte with a .sha256 recomputed to match it: only reading every member (and gzip's CRC) finds it."""
    lab(bak_home, app, "podman")
    assert run_cli("create").code == 0
    [archive] = backups(bak_home)
    data = bytearray(archive.read_bytes())
    data[len(data) - 20] ^= 0x40  # inside the deflate stream's last blocks
    archive.write_bytes(bytes(data))
    (archive.parent / (archive.name + ".sha256")).write_text(f"{hashlib.sha256(data).hexdigest()}  {archive.name}\n")
    verified = run_cli("verify")
    assert verified.code == 1, verified.envelope
    row = verified.envelope["result"]["checked"][0]
    assert row["checksum"] == "ok" and row["format"] == "failed"


def fill_big(path: Path, megabytes: int = 32) -> None:
    """Incompressible data, so tar + gzip run long enough (a second or more) to be caught in the middle."""
    with open(path / "big.bin", "wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))


def test_container_runs_again_after_tar_is_killed(engine, app, bak_home):
    lab(bak_home, app, "podman")
    fill_big(app.path)
    result = {}

    def run():
        result["cli"] = run_cli("create")

    import threading

    worker = threading.Thread(target=run)
    worker.start()
    os.kill(wait_for_tar(app.path), signal.SIGKILL)
    worker.join(60)
    created = result["cli"]
    assert created.code == 1 and "tar" in created.envelope["errors"][0]["message"], created.envelope
    assert engine.running(app.container)
    assert not list((bak_home / "dest" / "docker-volumes" / "db").iterdir())  # no partial left behind


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_sigterm_to_bak_mid_tar_restarts_the_container(engine, engine_host, app, bak_home, where):
    if where == "ssh":
        known = engine_host.trust(bak_home / "known_hosts")
        lab(bak_home, app, "docker", host="engine", hosts={"engine": engine_host.host_config(known)})
    else:
        lab(bak_home, app, "docker")
    fill_big(app.path)
    proc = bak_subprocess("create", "--json", env={**engine.env, "BAK_CONFIG": str(bak_home / "config.yaml")})
    try:
        tar = wait_for_tar(app.path)
        assert not engine.running(app.container)  # stopped for the copy
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    envelope = json.loads(out)
    assert envelope["errors"][0]["code"] == "interrupted"
    assert engine.running(app.container)
    deadline = time.monotonic() + 10
    while tar_processes(app.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tar_processes(app.path), f"tar {tar} outlived bak"
    assert not list((bak_home / "dest" / "docker-volumes" / "db").iterdir())
    log = run_cli("log", "--target", "db").envelope["result"]
    assert log["operations"][0]["status"] == "interrupted"


def test_a_container_that_cannot_start_again_is_a_problem(engine, app, bak_home):
    """The container is removed while bak holds it stopped (tar paused meanwhile): the backup is
    kept, and the run says the container did not come back."""
    lab(bak_home, app, "podman")
    fill_big(app.path, 16)
    result = {}
    import threading

    worker = threading.Thread(target=lambda: result.update(cli=run_cli("create")))
    worker.start()
    tar = wait_for_tar(app.path)
    os.kill(tar, signal.SIGSTOP)
    try:
        engine.podman("rm", "--force", "--time", "0", app.container)
    finally:
        os.kill(tar, signal.SIGCONT)
    worker.join(60)
    created = result["cli"]
    assert created.code == 1, created.envelope
    assert created.envelope["errors"][0]["code"] == "container_not_restarted"
    assert created.envelope["result"]["targets"][0]["status"] == "partial"
    assert len(backups(bak_home)) == 1


def test_restore_of_a_damaged_archive_leaves_no_volume(engine, app, bak_home):
    lab(bak_home, app, "podman")
    assert run_cli("create").code == 0
    [archive] = backups(bak_home)
    archive.write_bytes(archive.read_bytes()[:-5000])
    before = engine.volumes()
    restored = run_cli("restore", "--target", "db")
    assert restored.code == 1
    assert engine.volumes() == before


def test_a_volume_that_does_not_exist_is_bad_input(engine, app, bak_home):
    lab(bak_home, app, "podman")
    config = yaml.safe_load((bak_home / "config.yaml").read_text())
    config["targets"][0]["docker_volume"]["volume"] = "no-such-volume"
    write_config(bak_home / "config.yaml", config)
    created = run_cli("create")
    assert created.code == 2 and "not found" in created.envelope["errors"][0]["message"]


def test_config_names_match_whole_strings_and_cli_is_checked(bak_home):
    from bak import config

    base = {"version": 1, "destinations": {"n": {"kind": "local", "path": "/srv/b"}},
            "targets": [{"name": "g", "method": "docker_volume", "destinations": ["n"], "interval": "1w",
                         "docker_volume": {"container": "grafana", "volume": "grafana-data"}}]}
    assert config.validate(base) == []
    loaded = config.from_data(base)
    assert loaded.targets[0].options["cli"] == "docker" and loaded.targets[0].options["stop_timeout"] == 10
    for key, value in [("container", "grafana\n"), ("volume", "data\n"), ("cli", "nerdctl"), ("stop_timeout", -1)]:
        bad = json.loads(json.dumps(base))
        bad["targets"][0]["docker_volume"][key] = value
        assert [p["where"] for p in config.validate(bad)] == [f"targets[0].docker_volume.{key}"], (key, value)


# --- discover --------------------------------------------------------------------------------------
def test_discover_lists_the_engines_volumes_on_each_host_and_flags_those_no_target_backs_up(engine, engine_host, app,
                                                                                              bak_home):
    forgotten = f"forgotten{app.volume}"
    engine.podman("volume", "create", forgotten)
    known = engine_host.trust(bak_home / "known_hosts")
    target = {"method": "docker_volume", "destinations": ["nfs"],
              "docker_volume": {"container": app.container, "volume": app.volume}}
    write_config(bak_home / "config.yaml", {
        "version": 1, "hosts": {"engine": engine_host.host_config(known)},
        "destinations": {"nfs": {"kind": "local", "path": str(bak_home / "dest")}},
        "targets": [{**target, "name": "here", "docker_volume": {**target["docker_volume"], "cli": "podman"}},
                    {**target, "name": "there", "host": "engine"}]})
    found = run_cli("discover")
    assert found.code == 1
    items = {(i["host"], i["cli"], i["name"]): i["covered_by"] for i in found.envelope["result"]["items"]}
    assert items == {("local", "podman", app.volume): ["here"], ("local", "podman", forgotten): [],
                     ("engine", "docker", app.volume): ["there"], ("engine", "docker", forgotten): []}
    assert {e["message"] for e in found.envelope["errors"]} == {
        f"podman volume {forgotten} on local: no target backs it up",
        f"docker volume {forgotten} on engine: no target backs it up"}


# --- the stand-in, for the one fault a real engine does not produce -----------------------------
@pytest.fixture
def standin(bak_home, monkeypatch):
    root = bak_home / "standin"
    root.mkdir()
    monkeypatch.setenv("BAK_DOCKER_ROOT", str(root))
    monkeypatch.setenv("PATH", f"{REPO / 'tests' / 'standins'}:{os.environ['PATH']}")
    subprocess.run(["docker", "volume", "create", "grafana-data"], check=True, capture_output=True)
    state = json.loads((root / "state.json").read_text())
    (Path(state["volumes"]["grafana-data"]["mountpoint"]) / "grafana.db").write_bytes(os.urandom(5000))
    state["containers"] = {
        "4f1c2a9b8d7e": {"name": "grafana", "volumes": ["grafana-data"], "running": True},
        "9a8b7c6d5e4f": {"name": "renderer", "volumes": ["grafana-data"], "running": True, "refuses_stop": True}}
    (root / "state.json").write_text(json.dumps(state))
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"nfs": {"kind": "local", "path": str(bak_home / "dest")}},
        "targets": [{"name": "grafana", "method": "docker_volume", "destinations": ["nfs"], "interval": "1w",
                     "docker_volume": {"container": "grafana", "volume": "grafana-data", "stop_containers": True}}]})
    return root


def test_a_container_that_will_not_stop_means_no_backup_and_the_others_run_again(standin, bak_home):
    created = run_cli("create")
    assert created.code == 1
    assert created.envelope["errors"][0]["message"].startswith("docker could not stop container renderer: ")
    containers = json.loads((standin / "state.json").read_text())["containers"]
    assert containers["4f1c2a9b8d7e"]["running"] and containers["9a8b7c6d5e4f"]["running"]
    calls = (standin / "calls.log").read_text().splitlines()
    assert "stop -t 10 4f1c2a9b8d7e" in calls and calls[-1] == "start 9a8b7c6d5e4f"
    assert not (bak_home / "dest" / "docker-volumes" / "grafana").exists() or \
        not list((bak_home / "dest" / "docker-volumes" / "grafana").iterdir())
