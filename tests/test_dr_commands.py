"""The commands `bak dr plan` gives for each step, for the day bak itself is not there: built by pure
functions from the config and the chosen copy, compared here by value, and split back by a shell's rules."""

import shlex

from hypothesis import given
from hypothesis import strategies as st

from bak import config
from bak.dr import manual
from bak.discover import parse_names, volume_list_argv
from bak.stores.resticcmd import Artifact

PG_BIN = "/usr/lib/postgresql/15/bin"
RAW = {
    "version": 1,
    "hosts": {"pve": {"address": "192.0.2.15", "key_file": "/keys/id"},
              "store": {"address": "192.0.2.14", "port": 2222, "vmid": 104},
              "main": {"address": "192.0.2.13", "user": "me"}},
    "destinations": {"pve-local": {"kind": "proxmox", "host": "pve", "storage": "local"},
                     "nfs": {"kind": "ssh", "host": "store", "path": "/mnt/nfs/backups"},
                     "pve-nfs": {"kind": "ssh", "host": "pve", "path": "/mnt/pve/nfs"},
                     "disk": {"kind": "local", "path": "/srv/my backups"},
                     "usb": {"kind": "restic", "repository": "/mnt/usb/restic", "password": {"env": "RESTIC_PW"}}},
    "targets": [
        {"name": "vm-103", "method": "vzdump", "host": "pve", "destinations": ["pve-local", "nfs"],
         "vzdump": {"vmid": 103, "storage": "local", "restore_storage": "local-lvm"}},
        {"name": "ct-200", "method": "vzdump", "host": "pve", "destinations": ["pve-local", "nfs", "disk", "pve-nfs"],
         "vzdump": {"vmid": 200, "guest": "lxc", "storage": "local"}},
        {"name": "pg-app", "method": "pg_dump", "host": "store", "destinations": ["nfs", "usb"],
         "pg_dump": {"database": "app", "user": "backup", "bin_dir": PG_BIN, "format": "plain_gz", "globals": True,
                     "password": {"pgpass": "~/.pgpass"}}},
        {"name": "files-main", "method": "rsync", "host": "main", "destinations": ["disk", "nfs"],
         "rsync": {"source": "/home/me/projects"}},
        {"name": "vault", "method": "vault", "destinations": ["disk", "nfs"], "vault": {"path": "/home/me/vault"}},
        {"name": "grafana", "method": "docker_volume", "host": "main", "destinations": ["nfs"],
         "docker_volume": {"container": "grafana", "volume": "grafana-data"}}]}
CONFIG = config.from_data(RAW)
T = {t.name: t for t in CONFIG.targets}
D = CONFIG.destinations
SHA = "ab" * 32
HERE, PVE, STORE, MAIN = "this machine (the one that ran bak)", "pve (192.0.2.15)", "store (192.0.2.14)", "main (192.0.2.13)"


def lines(found):
    return [(line["on"], line["run"]) for line in found]


def test_a_vm_from_its_proxmox_storage_and_from_copies_elsewhere():
    name = "vzdump-qemu-103-2026_11_30-02_00_01.vma.zst"
    assert lines(manual.restore_lines(CONFIG, T["vm-103"], D["pve-local"], "", name, None, [])) == [
        (PVE, f"qmrestore local:backup/{name} 103 --unique 1 --storage local-lvm")]
    assert lines(manual.restore_lines(CONFIG, T["vm-103"], D["nfs"], "proxmox/vm-103", name, SHA, [])) == [
        (PVE, f"scp -P 2222 root@192.0.2.14:/mnt/nfs/backups/proxmox/vm-103/{name} /var/tmp/"),
        (PVE, f"echo '{SHA}  /var/tmp/{name}' | sha256sum -c -"),
        (PVE, f"qmrestore /var/tmp/{name} 103 --unique 1 --storage local-lvm"),
        (PVE, f"rm -- /var/tmp/{name}")]
    assert manual.bak_restore(T["vm-103"], "nfs", name) == f"bak restore --target vm-103 --backup {name} --from nfs --into 103"


def test_a_container_from_this_machine_and_from_a_share_on_the_pve_host():
    name = "vzdump-lxc-200-2026_11_30-02_00_01.tar.zst"
    assert lines(manual.restore_lines(CONFIG, T["ct-200"], D["disk"], "proxmox/ct-200", name, SHA, [])) == [
        (HERE, f"scp '/srv/my backups/proxmox/ct-200/{name}' root@192.0.2.15:/var/tmp/"),
        (PVE, f"echo '{SHA}  /var/tmp/{name}' | sha256sum -c -"),
        (PVE, f"pct restore 200 /var/tmp/{name} --unique 1"),
        (PVE, f"rm -- /var/tmp/{name}")]
    assert lines(manual.restore_lines(CONFIG, T["ct-200"], D["pve-nfs"], "proxmox/ct-200", name, SHA, [])) == [
        (PVE, f"echo '{SHA}  /mnt/pve/nfs/proxmox/ct-200/{name}' | sha256sum -c -"),
        (PVE, f"pct restore 200 /mnt/pve/nfs/proxmox/ct-200/{name} --unique 1")]  # read where it is: nothing to remove


def test_a_plain_dump_with_its_globals_on_the_database_host_and_from_restic():
    name = "pg-app-2026-11-30_060000.sql.gz"
    folder = "/mnt/nfs/backups/postgresql/pg-app"
    server = "-h 127.0.0.1 -p 5432 -U backup"
    assert lines(manual.restore_lines(CONFIG, T["pg-app"], D["nfs"], "postgresql/pg-app", name, SHA,
                                      [name + ".sha256", name + ".globals.sql"])) == [
        (STORE, f"echo '{SHA}  {folder}/{name}' | sha256sum -c -"),
        (STORE, f"{PG_BIN}/psql {server} -d postgres -v ON_ERROR_STOP=1 -f {folder}/{name}.globals.sql"),
        (STORE, f"{PG_BIN}/createdb {server} app"),
        (STORE, f"gunzip -c {folder}/{name} | {PG_BIN}/psql {server} -d app -v ON_ERROR_STOP=1 -q")]
    dump = "pg-app-2026-11-30_060000.dump"
    # in restic: the dump is its own snapshot, its globals a member of the seal (a batch's, named after another dump)
    located = Artifact("postgresql/pg-app", dump, 0.0, ["5eed01"], True, stream="5eed01", seal="5ea100",
                       seal_path="/postgresql/pg-app/pg-app-2026-11-29_060000.dump.sidecars.tar",
                       sidecars=[".globals.sql"])
    assert lines(manual.restore_lines(CONFIG, T["pg-app"], D["usb"], "postgresql/pg-app", dump, SHA,
                                      [dump + ".globals.sql"], located)) == [
        (HERE, f"restic -r /mnt/usb/restic dump 5eed01 /postgresql/pg-app/{dump} > /var/tmp/{dump}"),
        (HERE, f"scp -P 2222 /var/tmp/{dump} root@192.0.2.14:/var/tmp/"),
        (STORE, f"echo '{SHA}  /var/tmp/{dump}' | sha256sum -c -"),
        (HERE, "restic -r /mnt/usb/restic dump 5ea100 /postgresql/pg-app/pg-app-2026-11-29_060000.dump.sidecars.tar"
               f" | tar -xOf - {dump}.globals.sql > /var/tmp/{dump}.globals.sql"),
        (HERE, f"scp -P 2222 /var/tmp/{dump}.globals.sql root@192.0.2.14:/var/tmp/"),
        (STORE, f"{PG_BIN}/psql {server} -d postgres -v ON_ERROR_STOP=1 -f /var/tmp/{dump}.globals.sql"),
        (STORE, f"{PG_BIN}/createdb {server} app"),
        (STORE, f"{PG_BIN}/pg_restore {server} -d app --exit-on-error /var/tmp/{dump}"),
        (STORE, f"rm -- /var/tmp/{dump}"),
        (STORE, f"rm -- /var/tmp/{dump}.globals.sql")]


def test_a_folder_snapshot_comes_out_of_restic_into_a_stage_then_back_with_rsync():
    snap = "rsync-files-main-2026-11-30_010000"
    root = f"/srv/bak/rsync/files-main/{snap}"
    located = Artifact("rsync/files-main", snap, 0.0, ["7ree00"], True, tree=True, paths=(root, root + ".manifest"))
    assert lines(manual.restore_lines(CONFIG, T["files-main"], D["usb"], "rsync/files-main", snap, None, [], located)) == [
        (HERE, f"restic -r /mnt/usb/restic restore 7ree00 --target /var/tmp/{snap} --include {root}"),
        (MAIN, "mkdir -p -- /home/me/projects/"),
        (HERE, f"rsync -a --numeric-ids -e 'ssh -p 22' /var/tmp/{snap}{root}/ me@192.0.2.13:/home/me/projects/"),
        (HERE, f"rm -r -- /var/tmp/{snap}")]
    # an sftp: repository is reached as the host's SSH settings say, its port included
    offsite = config.from_data({**RAW, "destinations": {**RAW["destinations"], "away": {
        "kind": "restic", "host": "store", "repository": "sftp:/srv/restic", "password": {"env": "RESTIC_PW"}}}})
    assert manual.restic(offsite, offsite.destinations["away"]) == [
        "restic", "-r", "sftp:root@192.0.2.14:/srv/restic", "-o", "sftp.command=ssh -p 2222 root@192.0.2.14 -s sftp"]


def test_file_trees_go_back_with_rsync_from_wherever_the_snapshot_is():
    snap = "rsync-files-main-2026-11-30"
    assert lines(manual.restore_lines(CONFIG, T["files-main"], D["disk"], "rsync/files-main", snap, None, [])) == [
        (MAIN, "mkdir -p -- /home/me/projects/"),
        (HERE, f"rsync -a --numeric-ids -e 'ssh -p 22' '/srv/my backups/rsync/files-main/{snap}/' "
               "me@192.0.2.13:/home/me/projects/")]
    assert lines(manual.restore_lines(CONFIG, T["files-main"], D["nfs"], "rsync/files-main", snap, None, [])) == [
        (MAIN, "mkdir -p -- /home/me/projects/"),
        (MAIN, f"rsync -a --numeric-ids -e 'ssh -p 2222' root@192.0.2.14:/mnt/nfs/backups/rsync/files-main/{snap}/ "
               "/home/me/projects/")]
    vault = "rsync-vault-2026-11-30"
    assert lines(manual.restore_lines(CONFIG, T["vault"], D["nfs"], "rsync/vault", vault, None, [])) == [
        (HERE, "mkdir -p -- /home/me/vault/"),
        (HERE, f"rsync -a --numeric-ids -e 'ssh -p 2222' root@192.0.2.14:/mnt/nfs/backups/rsync/vault/{vault}/ "
               "/home/me/vault/"),
        (HERE, "git -C /home/me/vault/ status --short --branch")]
    assert lines(manual.restore_lines(CONFIG, T["vault"], D["disk"], "rsync/vault", vault, None, []))[1] == (
        HERE, f"rsync -a --numeric-ids '/srv/my backups/rsync/vault/{vault}/' /home/me/vault/")


def test_a_docker_volume_is_extracted_into_the_folder_the_engine_reports():
    name = "docker-vol-grafana-grafana-data-2026-11-30.tar.gz"
    found = lines(manual.restore_lines(CONFIG, T["grafana"], D["nfs"], "docker-volumes/grafana", name, SHA, []))
    assert found == [
        (MAIN, f"scp -P 2222 root@192.0.2.14:/mnt/nfs/backups/docker-volumes/grafana/{name} /var/tmp/"),
        (MAIN, f"echo '{SHA}  /var/tmp/{name}' | sha256sum -c -"),
        (MAIN, "docker volume create grafana-data"),
        (MAIN, "tar -C \"$(docker volume inspect --format '{{ .Mountpoint }}' grafana-data)\" --numeric-owner "
               f"--preserve-permissions --xattrs '--xattrs-include=*' --acls -xzf /var/tmp/{name}"),
        (MAIN, "docker start grafana"),
        (MAIN, f"rm -- /var/tmp/{name}")]


def test_bootstrap_lines_for_each_kind_of_destination():
    assert lines(manual.bootstrap_lines(CONFIG, D["disk"], None)) == [(HERE, "bak bootstrap --from '/srv/my backups'")]
    assert lines(manual.bootstrap_lines(CONFIG, D["pve-nfs"], "SHA256:abc")) == [
        (HERE, "bak bootstrap --from root@192.0.2.15:/mnt/pve/nfs --port 22 --key /keys/id --fingerprint SHA256:abc")]
    assert lines(manual.bootstrap_lines(CONFIG, D["usb"], None)) == [
        (HERE, "mkdir -p bak-kit"),
        (HERE, "restic -r /mnt/usb/restic dump --path /bak/kit.tar latest /bak/kit.tar | tar -x -C bak-kit"),
        (HERE, "bak bootstrap --from bak-kit")]


def test_a_line_splits_back_into_its_words_whatever_the_path_holds():
    name = "vzdump-qemu-103-2026_11_30-02_00_01.vma.zst"
    odd = config.from_data({**CONFIG.raw, "destinations": {**CONFIG.raw["destinations"],
                                                           "odd": {"kind": "local", "path": "/srv/it's $HOME; rm -rf x"}}})
    found = manual.restore_lines(odd, T["vm-103"], odd.destinations["odd"], "proxmox/vm-103", name, SHA, [])
    assert shlex.split(found[0]["run"]) == ["scp", f"/srv/it's $HOME; rm -rf x/proxmox/vm-103/{name}",
                                            "root@192.0.2.15:/var/tmp/"]


def test_volume_listing_argv():
    assert volume_list_argv("podman") == ["podman", "volume", "ls", "--format", "{{.Name}}"]


@given(st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=30)))
def test_name_lists_parse_back(names):
    assert parse_names("\n".join(names) + "\n") == [n.strip() for n in names if n.strip()]
    assert parse_names("\r\n".join(names)) == [n.strip() for n in names if n.strip()]


def test_what_bak_never_copies_is_named_with_the_machine_that_reads_it():
    from bak.dr.kit import secret_references

    assert secret_references(CONFIG) == [
        {"where": "hosts.pve.key_file", "ref": "/keys/id", "on": "local", "here": False},
        {"where": "destinations.usb.password", "ref": "env RESTIC_PW", "on": "local", "here": False},
        {"where": "targets[2].pg_dump.password", "ref": "pgpass ~/.pgpass", "on": "store", "here": None}]
