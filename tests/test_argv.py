"""Command lines are built by pure functions: compared here by value."""

from pathlib import Path

from bak.config import Host
from bak.methods import docker_volume, pg_dump, rsync
from bak.run.ssh import SSHRunner

PG = {"database": "app", "address": "127.0.0.1", "port": 5433, "user": "backup", "format": "custom",
      "bin_dir": "/usr/lib/postgresql/15/bin"}


def test_pg_dump_argv():
    assert pg_dump.dump_argv(PG, "00000003-00000002-1") == [
        "/usr/lib/postgresql/15/bin/pg_dump", "-h", "127.0.0.1", "-p", "5433", "-U", "backup", "-d", "app", "-w",
        "--snapshot=00000003-00000002-1", "-Fc"]
    assert pg_dump.dump_argv({**PG, "format": "plain_gz", "bin_dir": None}, None)[-3:] == ["-Fp", "-Z", "6"]


def test_pg_restore_and_psql_argv():
    assert pg_dump.restore_argv(PG, "app_restored", jobs=4, no_owner=True, path="/tmp/x.dump") == [
        "/usr/lib/postgresql/15/bin/pg_restore", "-h", "127.0.0.1", "-p", "5433", "-U", "backup", "-d", "app_restored",
        "-w", "--exit-on-error", "--no-owner", "-j", "4", "--", "/tmp/x.dump"]
    assert pg_dump.restore_argv(PG, "x", jobs=4)[-1] == "--exit-on-error"  # -j needs a file, stdin cannot
    assert pg_dump.psql_argv(PG, "postgres", {"db": "a b"})[-4:] == ["-v", "ON_ERROR_STOP=1", "-v", "db=a b"]
    assert pg_dump.globals_argv(PG, with_passwords=False)[-2:] == ["--globals-only", "--no-role-passwords"]
    assert pg_dump.full_read_argv(PG) == ["/usr/lib/postgresql/15/bin/pg_restore", "-f", "/dev/null"]


def test_passfile_escapes_colons_and_backslashes():
    assert pg_dump.passfile_line("a:b\\c") == b"*:*:*:*:a\\:b\\\\c\n"


def test_rsync_argv_and_transport():
    host = Host(name="store", address="192.0.2.10", port=2222, user="bak", key_file="/keys/id", connect_timeout=7)
    ssh = rsync.ssh_transport(host, Path("/state/known_hosts"))
    # bak's known_hosts only: the system-wide files are switched off (GlobalKnownHostsFile=/dev/null).
    assert ssh == ("ssh -p 2222 -o UserKnownHostsFile=/state/known_hosts -o GlobalKnownHostsFile=/dev/null "
                   "-o StrictHostKeyChecking=yes -o BatchMode=yes "
                   "-o ConnectTimeout=7 -o ServerAliveInterval=15 -o ServerAliveCountMax=3 -i /keys/id -o IdentitiesOnly=yes")
    assert rsync.remote_spec(host, "/mnt/nfs/x/") == "bak@192.0.2.10:/mnt/nfs/x/"
    assert rsync.remote_spec(Host(name="v6", address="::1", user="u"), "/p") == "u@[::1]:/p"
    assert rsync.rsync_argv("/src/", "bak@h:/dst/", link_dest="/dst/prev", excludes=["*.tmp", ".cache"], bwlimit=500,
                            checksum=True, ssh="ssh -p 22", algorithm="xxh128") == [
        "rsync", "-a", "-8", "--partial", "--numeric-ids", "--stats", "--no-human-readable", "-ii",
        "--out-format=%i %l %M %B %U %G %C %n%L", "--checksum-choice=xxh128",
        "-e", "ssh -p 22", "--secluded-args", "--checksum", "--bwlimit=500", "--exclude=*.tmp", "--exclude=.cache",
        "--link-dest=/dst/prev", "--", "/src/", "bak@h:/dst/"]
    assert rsync.rsync_argv("/snap/", "/snap.bak-listing/", dry_run=True, checksum=True, relative=True)[10:] == [
        "--dry-run", "--relative", "--checksum", "--", "/snap/", "/snap.bak-listing/"]


def test_rsync_output_parsing():
    out = ("Number of files: 1,234 (reg: 1,000, dir: 234)\nNumber of regular files transferred: 1\n"
           "Total bytes sent: 987\n")
    assert rsync.parse_stats(out) == {"files": 1234, "files_transferred": 1, "bytes_sent": 987}
    err = ('rsync: [sender] send_files failed to open "/src/secret": Permission denied (13)\n'
           'file has vanished: "/src/tmp/x"\n')
    assert rsync.failed_files(err) == ["/src/secret"] and rsync.vanished_files(err) == ["/src/tmp/x"]
    assert rsync.checksum_list("Checksum list:\n    xxh128 xxh3 xxh64 (xxhash) md5 md4 sha1 none\n")[:4] == \
        ["xxh128", "xxh3", "xxh64", "md5"]
    assert rsync.checksum_list("rsync version 3.1.3 protocol version 31\n") == ["md5"]


def test_docker_argv():
    assert docker_volume.inspect_argv("docker", "grafana-data") == ["docker", "volume", "inspect", "grafana-data"]
    assert docker_volume.users_argv("podman", "v") == [
        "podman", "ps", "--no-trunc", "--filter", "volume=v", "--format", "{{.ID}} {{.Names}}"]
    assert docker_volume.stop_argv("docker", "4f1c", 30) == ["docker", "stop", "-t", "30", "4f1c"]
    assert docker_volume.start_argv("podman", "4f1c") == ["podman", "start", "4f1c"]
    assert docker_volume.tar_create_argv("/var/lib/docker/volumes/v/_data", full=True) == [
        "tar", "-C", "/var/lib/docker/volumes/v/_data", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
        "--sparse", "-czf", "-", "."]
    assert docker_volume.tar_create_argv("/v", full=False) == ["tar", "-C", "/v", "--numeric-owner", "-czf", "-", "."]
    assert docker_volume.tar_extract_argv("/v", full=True) == [
        "tar", "-C", "/v", "--numeric-owner", "--preserve-permissions", "--xattrs", "--xattrs-include=*", "--acls",
        "-xzf", "-"]
    assert docker_volume.listing_argv("/v") == ["find", "/v", "-printf", "%y\\0%m\\0%U\\0%G\\0%s\\0%T@\\0%P\\0%l\\0"]
    assert docker_volume.checksums_argv("/v") == ["find", "/v", "-type", "f", "-exec", "sha256sum", "-z", "--", "{}", "+"]


def test_rootless_podman_reads_volume_files_in_its_user_namespace():
    rootless = docker_volume.Engine("podman", rootless=True)
    assert rootless.on_files(["tar", "-C", "/home/u/.local/share/containers/storage/volumes/v/_data", "-czf", "-", "."]) == [
        "podman", "unshare", "tar", "-C", "/home/u/.local/share/containers/storage/volumes/v/_data", "-czf", "-", "."]
    assert docker_volume.Engine("podman").on_files(["find", "/v"]) == ["find", "/v"]


def test_ssh_command_line_is_one_shlex_join():
    runner = SSHRunner.__new__(SSHRunner)
    assert runner.command_line(["pg_dump", "-d", "a b", "$(x)"], {"PGPASSFILE": "/tmp/p f"}) == \
        "env 'PGPASSFILE=/tmp/p f' pg_dump -d 'a b' '$(x)'"


def test_restic_argv():
    from bak.stores import resticcmd as cmd

    sftp = cmd.sftp_command("ssh -p 2222 -o UserKnownHostsFile=/state/known_hosts", "bak", "192.0.2.10")
    assert sftp == "ssh -p 2222 -o UserKnownHostsFile=/state/known_hosts bak@192.0.2.10 -s sftp"
    options = cmd.global_options(sftp_command=sftp, limit_upload_kib=500)
    assert options == ["-o", f"sftp.command={sftp}", "--limit-upload", "500"]
    assert cmd.backup_stdin_argv("/postgresql/pg-app/x.dump", ["upload=ab12"], options) == [
        "restic", *options, "backup", "--stdin", "--stdin-filename", "/postgresql/pg-app/x.dump", "--host", "bak",
        "--json", "--tag", "bak", "--tag", "upload=ab12"]
    assert cmd.backup_tree_argv(["/nfs/rsync/t/s", "/nfs/rsync/t/s.manifest"], ["tree", "path=rsync/t/s"]) == [
        "restic", "backup", "--host", "bak", "--json", "--tag", "bak", "--tag", "tree", "--tag", "path=rsync/t/s",
        "--", "/nfs/rsync/t/s", "/nfs/rsync/t/s.manifest"]
    assert cmd.check_argv((3, 30)) == ["restic", "check", "--read-data-subset=3/30"]
    assert cmd.check_argv(None) == ["restic", "check"]
    assert cmd.forget_argv(["a1", "b2"]) == ["restic", "forget", "a1", "b2"]
    assert cmd.prune_argv() == ["restic", "prune"]
    assert cmd.dump_argv("a1", "/postgresql/pg-app/x.dump") == ["restic", "dump", "a1", "/postgresql/pg-app/x.dump"]
    assert cmd.restore_argv("a1", "/scratch", "/nfs/rsync/t/s") == [
        "restic", "restore", "a1", "--target", "/scratch", "--include", "/nfs/rsync/t/s"]
    assert cmd.tag_argv("a1", ["protected"]) == ["restic", "tag", "--add", "protected", "a1"]
    assert cmd.simple_argv("cat config") == ["restic", "cat", "config"]
    assert cmd.sftp_location("bak", "192.0.2.10", "sftp:/srv/restic") == "sftp:bak@192.0.2.10:/srv/restic"
    assert cmd.sftp_location("bak", "fd00::1", "sftp:bak@[fd00::1]:/srv/restic") == "sftp:bak@[fd00::1]:/srv/restic"
    assert cmd.sftp_parts("sftp:relative/path") == (None, "relative/path")
    assert cmd.server_of("sftp:bak@[FD00::1]:/srv") == "fd00::1"
    assert [cmd.backend_of(r) for r in ("/mnt/usb", "~/r", "sftp:/x", "rest:http://h:8000/", "s3:https://h/b")] == [
        "local", "local", "sftp", "rest", "s3"]
    assert cmd.server_of("s3:https://S3.Example.com:9000/bucket") == "s3.example.com"
    assert cmd.server_of("/mnt/usb") is None


def test_top_level_names_are_cut_into_runs_in_rsyncs_own_order():
    # rsync lists files before folders, and a folder as if its name ended in "/": "a" after "a.txt" and "a-b".
    entries = [(b"a", True), (b"a.txt", False), (b"a-b", True), (b"z", False), (b"-x", True), (b"caf\xc3\xa9", True)]
    assert rsync.deal(entries, 2) == [[b"a.txt", b"z", b"-x"], [b"a-b", b"a", b"caf\xc3\xa9"]]
    assert rsync.deal(list(reversed(entries)), 2) == rsync.deal(entries, 2)
    assert rsync.deal(entries, 4) == [[b"a.txt"], [b"z", b"-x"], [b"a-b"], [b"a", b"caf\xc3\xa9"]]
    assert rsync.deal([(b"only", True)], 4) == [[b"only"]]
    assert rsync.rsync_argv("/src/", "/dst/", files_from=True, ignore_missing=True)[-7:] == [
        "--files-from=-", "--from0", "--recursive", "--ignore-missing-args", "--", "/src/", "/dst/"]
