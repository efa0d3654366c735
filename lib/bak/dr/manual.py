"""The commands that restore one step, for the day bak itself is not there: what bak would run, as
shell lines built from argv lists (each word quoted for the shell), each with the machine it runs on.

Pure functions of the config, the target and the chosen copy; the tests compare them by value.
A copy that is not on the machine that restores it is fetched first into STAGE there, its sha256
checked, and removed once restored.
"""

from __future__ import annotations

import posixpath
import shlex

from bak.config import LOCAL, Config, Destination, Target
from bak.dr import KIT_FOLDER, KIT_TARBALL
from bak.methods import docker_volume, pg_dump, vzdump
from bak.methods.rsync import remote_spec
from bak.stores import resticcmd
from bak.stores.resticcmd import Artifact

STAGE = "/var/tmp"  # any folder with room for the copy will do; this one survives a reboot
RESTIC_KIT = "bak-kit"  # where the kit's files come out of a restic repository, for `bak bootstrap --from`


def machine(config: Config, host_name: str) -> str:
    """Where a line runs, as a person finds it: the host's name and address."""
    if host_name == LOCAL:
        return "this machine (the one that ran bak)"
    return f"{host_name} ({config.hosts[host_name].address})"


def line(config: Config, host_name: str, text: str) -> dict:
    return {"on": machine(config, host_name), "run": text}


def _scp(config: Config, source: str, dest: str, port_of: str) -> str:
    port = config.host(port_of).port
    return shlex.join(["scp", *(["-P", str(port)] if port != 22 else []), source, dest])


def artifact_path(dest: Destination, folder: str, name: str) -> str:
    """A file's path on its destination's own host (a restic path is the one inside the repository)."""
    if dest.kind == "restic":
        return f"/{folder}/{name}"
    return posixpath.join(dest.path, folder, name)


def restic(config: Config, dest: Destination) -> list[str]:
    """`restic` and the repository as a person's restic reaches it: an sftp: one through the host's SSH
    address and port. restic asks for the password (destinations.NAME.password says where it is kept);
    an S3 repository also wants AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment."""
    if resticcmd.backend_of(dest.repository) != "sftp":
        return ["restic", "-r", dest.repository]
    host = config.host(dest.host)
    argv = ["restic", "-r", resticcmd.sftp_location(host.user, host.address, dest.repository)]
    if host.port != 22:
        argv += ["-o", "sftp.command=" + shlex.join(["ssh", "-p", str(host.port), f"{host.user}@{host.address}",
                                                     "-s", "sftp"])]
    return argv


def restic_dump(config: Config, dest: Destination, inside: str, to: str, snapshot: str | None = None) -> str:
    """The file at `inside` of that snapshot (or of the newest snapshot holding it) into `to`."""
    which = [snapshot] if snapshot else ["--path", inside, "latest"]
    return shlex.join([*restic(config, dest), "dump", *which, inside]) + " > " + shlex.quote(to)


def fetch(config: Config, dest: Destination, folder: str, name: str, to_host: str,
          located: Artifact | None = None) -> tuple[str, list[dict]]:
    """(the file's path on `to_host`, the lines that bring it there). A Proxmox storage's archive is named
    by its volume ID, which only the PVE host's own tools read. `located`: the backup in a restic
    repository, whose snapshot the lines name (its sidecars are in its seal's tar)."""
    if dest.kind == "proxmox":
        return f"{dest.storage}:backup/{name}", []
    path = artifact_path(dest, folder, name)
    staged = posixpath.join(STAGE, name)
    if dest.kind == "restic":
        if located and located.name != name:  # a sidecar: a member of the seal's tar
            pull = (shlex.join([*restic(config, dest), "dump", located.seal, located.seal_path]) + " | "
                    + shlex.join(["tar", "-xOf", "-", name]) + " > " + shlex.quote(staged))
        else:
            pull = restic_dump(config, dest, path, staged, located.stream if located else None)
        lines = [line(config, LOCAL, pull)]
        if to_host != LOCAL:
            lines.append(line(config, LOCAL, _scp(config, staged, remote_spec(config.host(to_host), STAGE + "/"), to_host)))
        return staged, lines
    if dest.host == to_host:
        return path, []
    if dest.host == LOCAL:  # on this machine, pushed to the one that restores
        return staged, [line(config, LOCAL, _scp(config, path, remote_spec(config.host(to_host), STAGE + "/"), to_host))]
    return staged, [line(config, to_host, _scp(config, remote_spec(config.host(dest.host), path), STAGE + "/", dest.host))]


def sha256_check(sha256: str, path: str) -> str:
    return "echo " + shlex.quote(f"{sha256}  {path}") + " | sha256sum -c -"


def _fetched(config: Config, target: Target, dest: Destination, folder: str, name: str,
             sha256: str | None, located: Artifact | None) -> tuple[str, list[dict]]:
    """The copy brought to the target's host and checked there."""
    path, lines = fetch(config, dest, folder, name, target.host, located)
    if sha256 and dest.kind != "proxmox":
        lines.append(line(config, target.host, sha256_check(sha256, path)))
    return path, lines


def _cleanup(config: Config, target: Target, path: str) -> list[dict]:
    return [line(config, target.host, shlex.join(["rm", "--", path]))] if path.startswith(STAGE + "/") else []


def original(target: Target) -> str:
    """What the step puts back: the VMID, the database, the folder or the volume the target backs up."""
    options = target.options
    if target.method == "vzdump":
        return str(options["vmid"])
    if target.method == "pg_dump":
        return options["database"]
    if target.method == "docker_volume":
        return options["volume"]
    return options.get("source") or options["path"]


def bak_restore(target: Target, dest_name: str, name: str) -> str:
    """bak's own command: this backup, from this copy, back into the original (refused if that still exists)."""
    return shlex.join(["bak", "restore", "--target", target.name, "--backup", name, "--from", dest_name,
                       "--into", original(target)])


def restore_lines(config: Config, target: Target, dest: Destination, folder: str, name: str, sha256: str | None,
                  sidecars: list[str], located: Artifact | None = None) -> list[dict]:
    """Every line that restores `name` from the copy on `dest` into the original, by hand. `located`:
    the backup as a restic repository holds it (its snapshots), for a restic destination."""
    if target.method == "vzdump":
        return vzdump_lines(config, target, dest, folder, name, sha256, located)
    if target.method == "pg_dump":
        return pg_lines(config, target, dest, folder, name, sha256, name + ".globals.sql" in sidecars, located)
    if target.method == "docker_volume":
        return volume_lines(config, target, dest, folder, name, sha256, located)
    return tree_lines(config, target, dest, folder, name, located)


def vzdump_lines(config: Config, target: Target, dest: Destination, folder: str, name: str,
                 sha256: str | None, located: Artifact | None = None) -> list[dict]:
    path, lines = _fetched(config, target, dest, folder, name, sha256, located)
    options = target.options
    argv = vzdump.restore_argv(vzdump.guest_of(name), path, options["vmid"], storage=options.get("restore_storage"),
                               force=False)
    return [*lines, line(config, target.host, shlex.join(argv)), *_cleanup(config, target, path)]


def _server(options: dict) -> list[str]:
    return pg_dump.connection(options, "postgres")[:-2]  # -h, -p and -U without the database


def pg_lines(config: Config, target: Target, dest: Destination, folder: str, name: str, sha256: str | None,
             with_globals: bool, located: Artifact | None = None) -> list[dict]:
    options = target.options
    database = options["database"]
    path, lines = _fetched(config, target, dest, folder, name, sha256, located)
    cleanup = _cleanup(config, target, path)
    if with_globals:  # roles and tablespaces first, as a superuser
        globals_path, fetched = fetch(config, dest, folder, name + ".globals.sql", target.host, located)
        lines += fetched
        lines.append(line(config, target.host, shlex.join([pg_dump.tool(options, "psql"), *pg_dump.connection(options, "postgres"),
                                                           "-v", "ON_ERROR_STOP=1", "-f", globals_path])))
        cleanup += _cleanup(config, target, globals_path)
    lines.append(line(config, target.host, shlex.join([pg_dump.tool(options, "createdb"), *_server(options), database])))
    if name.endswith(".dump"):
        load = shlex.join([pg_dump.tool(options, "pg_restore"), *pg_dump.connection(options, database), "--exit-on-error",
                           path])
    else:
        load = shlex.join(["gunzip", "-c", path]) + " | " + shlex.join(
            [pg_dump.tool(options, "psql"), *pg_dump.connection(options, database), "-v", "ON_ERROR_STOP=1", "-q"])
    return [*lines, line(config, target.host, load), *cleanup]


def tree_lines(config: Config, target: Target, dest: Destination, folder: str, name: str,
               located: Artifact | None = None) -> list[dict]:
    """rsync the snapshot folder back into the source folder, from wherever each of them is (out of a
    restic repository: restored into STAGE here first)."""
    source = original(target).rstrip("/") + "/"
    keep = ["rsync", "-a", "--numeric-ids"]
    store_host, home = dest.host, target.host
    staging = []
    if dest.kind == "restic":
        root = located and resticcmd.tree_root(located)
        if not root:
            return []  # not a folder snapshot restic can give back: bak's own command is the only way
        stage = posixpath.join(STAGE, name)
        snapshot = resticcmd.restored_root(stage, root) + "/"
        store_host = LOCAL
        staging = [line(config, LOCAL, shlex.join([*restic(config, dest), "restore", located.ids[0], "--target", stage,
                                                   "--include", root]))]
    else:
        snapshot = posixpath.join(dest.path, folder, name) + "/"
    if store_host == home:
        runs_on, argv = home, [*keep, snapshot, source]
    elif store_host == LOCAL:
        runs_on, argv = LOCAL, [*keep, "-e", f"ssh -p {config.host(home).port}", snapshot,
                                remote_spec(config.host(home), source)]
    else:
        runs_on, argv = home, [*keep, "-e", f"ssh -p {config.host(store_host).port}",
                               remote_spec(config.host(store_host), snapshot), source]
    lines = [*staging, line(config, home, shlex.join(["mkdir", "-p", "--", source])), line(config, runs_on, shlex.join(argv))]
    if staging:
        lines.append(line(config, LOCAL, shlex.join(["rm", "-r", "--", posixpath.join(STAGE, name)])))
    if target.method == "vault":
        lines.append(line(config, home, shlex.join(["git", "-C", source, "status", "--short", "--branch"])))
    return lines


def volume_lines(config: Config, target: Target, dest: Destination, folder: str, name: str,
                 sha256: str | None, located: Artifact | None = None) -> list[dict]:
    options = target.options
    cli, volume = options["cli"], options["volume"]
    path, lines = _fetched(config, target, dest, folder, name, sha256, located)
    mountpoint = '"$(' + shlex.join([cli, "volume", "inspect", "--format", "{{ .Mountpoint }}", volume]) + ')"'
    extract = shlex.join(docker_volume.tar_extract_argv("MOUNTPOINT", True)[:-1] + [path]).replace(
        " MOUNTPOINT ", f" {mountpoint} ", 1)
    return [*lines, line(config, target.host, shlex.join(docker_volume.volume_create_argv(cli, volume))),
            line(config, target.host, extract), line(config, target.host, shlex.join([cli, "start", options["container"]])),
            *_cleanup(config, target, path)]


def bootstrap_lines(config: Config, dest: Destination, fingerprint: str | None) -> list[dict]:
    """How a fresh machine gets bak's config and journal back from the copies on `dest`."""
    if dest.kind == "local":
        return [line(config, LOCAL, shlex.join(["bak", "bootstrap", "--from", dest.path]))]
    if dest.kind == "ssh":
        host = config.host(dest.host)
        argv = ["bak", "bootstrap", "--from", remote_spec(host, dest.path), "--port", str(host.port)]
        argv += ["--key", host.key_file] if host.key_file else []
        argv += ["--fingerprint", fingerprint] if fingerprint else []
        return [line(config, LOCAL, shlex.join(argv))]
    # restic holds the kit as one tarball: out of the repository into a folder, then bootstrap from it
    inside = f"/{KIT_FOLDER}/{KIT_TARBALL}"
    return [line(config, LOCAL, shlex.join(["mkdir", "-p", RESTIC_KIT])),
            line(config, LOCAL, shlex.join([*restic(config, dest), "dump", "--path", inside, "latest", inside])
                 + " | " + shlex.join(["tar", "-x", "-C", RESTIC_KIT])),
            line(config, LOCAL, shlex.join(["bak", "bootstrap", "--from", RESTIC_KIT]))]
