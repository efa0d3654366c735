"""rsync snapshots, config copies and the git vault, against real rsync, sshd and git."""

import json
import os
import subprocess
import threading
import time

import pytest
import xxhash

from conftest import need, run_cli, write_config


def du_bytes(path):
    return int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def make_tree(root, files=200, size=65536):
    for i in range(files):
        sub = root / f"dir{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{i}.txt").write_bytes(os.urandom(size))
    (root / "notes.tmp").write_text("scratch")
    (root / ".cache").mkdir(exist_ok=True)
    (root / ".cache" / "junk").write_text("junk")


def files_config(home, *, source, dest, host="local", hosts=None, method="rsync", **options):
    block = {"source": str(source), "excludes": ["*.tmp", ".cache"], **options}
    data = {"version": 1, "destinations": {"nfs": dest}, "policies": {"p": {"keep_daily": 7}},
            "targets": [{"name": "files", "method": method, "host": host, "destinations": ["nfs"], "policy": "p",
                         "interval": "1d", method: block}]}
    if hosts:
        data["hosts"] = hosts
    write_config(home / "config.yaml", data)


def snapshots(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_local_snapshots_hard_link_unchanged_files(bak_home):
    need("rsync")
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)})
    first = run_cli("create")
    assert first.code == 0, first.envelope
    folder = dest / "rsync" / "files"
    name1 = first.envelope["result"]["targets"][0]["name"]
    assert name1.startswith("rsync-files-") and len(name1) == len("rsync-files-2026-11-30")
    assert not (folder / name1 / "notes.tmp").exists() and not (folder / name1 / ".cache").exists()
    before = du_bytes(dest)
    time.sleep(1.1)
    second = run_cli("create")
    assert second.code == 0, second.envelope
    name2 = second.envelope["result"]["targets"][0]["name"]
    assert name2.startswith(name1 + "_")  # second of the day: _HHMMSS
    assert du_bytes(dest) - before < 0.01 * before
    one, two = folder / name1 / "dir0" / "file0.txt", folder / name2 / "dir0" / "file0.txt"
    assert one.stat().st_ino == two.stat().st_ino
    (source / "dir0" / "file0.txt").write_bytes(b"changed")
    time.sleep(1.1)
    third = run_cli("create").envelope["result"]["targets"][0]["name"]
    assert (folder / third / "dir0" / "file0.txt").stat().st_ino != two.stat().st_ino
    assert (folder / third / "dir1" / "file1.txt").stat().st_ino == (folder / name2 / "dir1" / "file1.txt").stat().st_ino
    head, *manifest = [json.loads(line) for line in (folder / f"{third}.manifest").read_text().splitlines()]
    assert head["bak_manifest"] == 2 and head["checksum"] == "xxh128"
    row = next(r for r in manifest if r["path"] == "dir0/file0.txt")
    assert row["size"] == 7 and row["xxh128"] == xxhash.xxh3_128_hexdigest(b"changed")
    assert sum(1 for r in manifest if r["type"] == "f") == 200 and sum(1 for r in manifest if r["type"] == "d") == 11
    assert run_cli("verify", "--all-backups").code == 0
    drill = run_cli("drill")
    assert drill.code == 0, drill.envelope
    assert drill.envelope["result"]["drills"][0]["checks"][0]["check"] == "211 entries match the manifest"
    (folder / third / "dir4" / "file4.txt").write_bytes(b"bit rot")
    rotten = run_cli("drill")
    assert rotten.code == 1
    assert rotten.envelope["result"]["drills"][0]["checks"][0]["differences"][0].startswith("dir4/file4.txt (size 7")
    (folder / name2 / "dir3" / "file3.txt").write_bytes(b"tampered")
    bad = run_cli("verify", "--all-backups")
    assert bad.code == 1 and "changed: dir3/file3.txt (size 8" in bad.envelope["errors"][0]["message"]


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_rsync_over_real_sshd_both_directions(bak_home, sshd, direction):
    need("rsync", "ssh")
    known = sshd.trust(bak_home / "known_hosts")
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=50)
    hosts = {"box": sshd.host_config(known)}
    if direction == "push":
        files_config(bak_home, source=source, dest={"kind": "ssh", "host": "box", "path": str(dest)}, hosts=hosts)
    else:
        files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, host="box", hosts=hosts)
    result = run_cli("create")
    assert result.code == 0, result.envelope
    entry = result.envelope["result"]["targets"][0]
    name = entry["name"]
    assert entry["copies"][0]["stats"]["files_transferred"] == 50
    assert sorted(p.name for p in (dest / "rsync" / "files" / name).rglob("*.txt")) == sorted(p.name for p in source.rglob("*.txt"))
    assert run_cli("verify").code == 0
    restored = run_cli("restore", "--target", "files", "--file", "dir2/file2.txt", "--into", str(bak_home / "one"))
    assert restored.code == 0, restored.envelope
    assert (bak_home / "one" / "dir2" / "file2.txt").read_bytes() == (source / "dir2" / "file2.txt").read_bytes()


def test_restore_beside_refuses_overwrite_and_force_takes_a_safety_snapshot(bak_home):
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=20)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)})
    assert run_cli("create").code == 0
    beside = run_cli("restore", "--target", "files")
    assert beside.code == 0, beside.envelope
    path = beside.envelope["result"]["path"]
    assert path.startswith(str(source) + ".restored-")
    assert sorted(p.name for p in (bak_home / path).rglob("*.txt")) == sorted(p.name for p in source.rglob("*.txt"))
    (source / "dir0" / "file0.txt").write_bytes(b"newer work")
    (source / "new.txt").write_text("new")
    refused = run_cli("restore", "--target", "files", "--into", str(source))
    assert refused.code == 3 and refused.envelope["errors"][0]["code"] == "would_overwrite"
    assert (source / "new.txt").exists()
    time.sleep(1.1)
    forced = run_cli("restore", "--target", "files", "--into", str(source), "--force", "--backup",
                     beside.envelope["result"]["backup"])
    assert forced.code == 0, forced.envelope
    assert not (source / "new.txt").exists()
    safety = forced.envelope["result"]["safety_snapshot"]
    store, _, path = safety.partition(":")
    assert store == "nfs" and path.startswith("safety/files/rsync-files-")
    assert (dest / path / "new.txt").read_text() == "new" and (dest / (path + ".protected")).exists()


def test_vanished_file_is_a_warning(bak_home):
    source, dest = bak_home / "src", bak_home / "dest"
    source.mkdir()
    (source / "a_big.bin").write_bytes(os.urandom(3 << 20))
    (source / "z_gone.txt").write_text("soon gone")
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, bwlimit_kib=2048)
    threading.Timer(0.6, lambda: (source / "z_gone.txt").unlink()).start()
    result = run_cli("create")
    assert result.code == 0, result.envelope
    assert any("vanished" in w and "z_gone.txt" in w for w in result.envelope["warnings"])


def test_full_destination_fails_cleanly(bak_home, tiny_disk):
    source = bak_home / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(tiny_disk)})
    result = run_cli("create")
    assert result.code == 1
    assert result.envelope["errors"][0]["code"] == "disk_full"
    assert list((tiny_disk / "rsync" / "files").iterdir()) == []


def test_a_disk_filled_by_parallel_rsyncs_fails_cleanly_and_keeps_the_snapshot_before(bak_home, tiny_disk, monkeypatch):
    import bak.methods.rsync as rsync_method

    monkeypatch.setattr(rsync_method, "cores", lambda runner: 2)
    source = bak_home / "src"
    for top in ("a", "b"):
        (source / top).mkdir(parents=True)
        (source / top / "small.bin").write_bytes(os.urandom(100_000))
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(tiny_disk)})
    first = run_cli("create").envelope["result"]["targets"][0]["name"]
    for top in ("a", "b"):
        (source / top / "big.bin").write_bytes(os.urandom(600_000))
    time.sleep(1.05)
    result = run_cli("create")
    assert result.code == 1 and result.envelope["errors"][0]["code"] == "disk_full", result.envelope
    assert sorted(p.name for p in (tiny_disk / "rsync" / "files").iterdir()) == [first, f"{first}.manifest"]
    assert run_cli("verify").code == 0


def test_a_long_snapshot_says_how_far_it_has_listed(bak_home, monkeypatch):
    """Every PROGRESS_EVERY_S seconds, the entries and bytes every rsync of the snapshot has listed so far."""
    import bak.methods.rsync as rsync_method

    monkeypatch.setattr(rsync_method, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(rsync_method, "cores", lambda runner: 2)
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=3000, size=10)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=[])
    from click.testing import CliRunner

    from bak.cli import cli

    made = CliRunner().invoke(cli, ["create"], catch_exceptions=False)  # for people: under --json, stderr stays quiet
    assert made.exit_code == 0, made.output
    said = [line for line in made.stderr.splitlines() if "listed so far" in line]
    counts = [int(line.split(": ", 1)[1].split(" entries")[0].replace(",", "")) for line in said]
    # Each of the 2 rsyncs tells every 1,024 entries: 1,024 then 2,048 (either part first), never more than all.
    assert counts[:2] == [1024, 2048] and counts == sorted(counts) and counts[-1] <= 3000 + 10 + 3, said
    assert all(line.startswith("files: ") and "on nfs)" in line for line in said)


def test_a_top_level_name_gone_before_its_rsync_starts_is_absent_not_a_failure(bak_home, monkeypatch):
    """A live tree: a name listed for a part may be removed before that part's rsync reads it."""
    import bak.methods.rsync as rsync_method

    listed = rsync_method.parallel_groups
    monkeypatch.setattr(rsync_method, "parallel_groups",
                        lambda runner, source, workers: [group + [b"gone meanwhile"] for group in listed(runner, source, 2)])
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=20, size=100)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=[])
    made = run_cli("create")
    assert made.code == 0 and not made.envelope["warnings"], made.envelope
    copy = made.envelope["result"]["targets"][0]["copies"][0]
    assert copy["rsyncs"] == 2 and copy["files"] == 22
    assert entries_of(dest / "rsync" / "files" / made.envelope["result"]["targets"][0]["name"]) == entries_of(source)


def test_sshd_killed_mid_rsync_leaves_no_snapshot_and_a_rerun_resumes(bak_home, private_sshd, monkeypatch):
    import bak.methods.rsync as rsync_method

    monkeypatch.setattr(rsync_method, "BACKOFF_S", 0.2)
    known = private_sshd.trust(bak_home / "known_hosts")
    source, dest = bak_home / "src", bak_home / "dest"
    source.mkdir()
    for i in range(4):
        (source / f"part{i}.bin").write_bytes(os.urandom(1 << 20))
    files_config(bak_home, source=source, dest={"kind": "ssh", "host": "box", "path": str(dest)},
                 hosts={"box": private_sshd.host_config(known)}, bwlimit_kib=1024)
    threading.Timer(1.5, private_sshd.stop).start()
    failed = run_cli("create")
    assert failed.code == 1
    assert failed.envelope["errors"][0]["code"] == "transport"
    folder = dest / "rsync" / "files"
    leftovers = [p.name for p in folder.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].endswith(".partial")
    kept = sum(p.stat().st_size for p in (folder / leftovers[0]).rglob("*") if p.is_file())
    assert kept > 0
    private_sshd.start()
    files_config(bak_home, source=source, dest={"kind": "ssh", "host": "box", "path": str(dest)},
                 hosts={"box": private_sshd.host_config(known)})
    rerun = run_cli("create")
    assert rerun.code == 0, rerun.envelope
    copy = rerun.envelope["result"]["targets"][0]["copies"][0]
    assert copy["resumed"] is True and copy["stats"]["matched_data"] + copy["stats"]["literal_data"] > 0
    assert [p.name for p in folder.iterdir() if p.is_dir()] == [leftovers[0].removesuffix(".partial")]


def test_config_copy_is_a_snapshot_in_the_config_folder(bak_home):
    source, dest = bak_home / "claude", bak_home / "dest"
    source.mkdir()
    (source / "settings.json").write_text("{}")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"nfs": {"kind": "local", "path": str(dest)}},
        "targets": [{"name": "claude-config", "method": "config", "destinations": ["nfs"], "interval": "1w",
                     "config": {"source": str(source)}}]})
    result = run_cli("create")
    assert result.code == 0, result.envelope
    name = result.envelope["result"]["targets"][0]["name"]
    assert (dest / "config" / "claude-config" / name / "settings.json").read_text() == "{}"


def git(*args, cwd=None):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def vault(bak_home):
    need("git")
    remote = bak_home / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(remote))
    work = bak_home / "vault"
    git("init", "-q", "-b", "main", str(work))
    git("-C", str(work), "remote", "add", "origin", str(remote))
    (work / "note.md").write_text("# hello")
    write_config(bak_home / "config.yaml", {
        "version": 1, "destinations": {"nfs": {"kind": "local", "path": str(bak_home / "dest")}},
        "targets": [{"name": "vault", "method": "vault", "destinations": ["nfs"],
                     "vault": {"path": str(work), "remotes": ["origin"], "branch": "main"}}]})
    return work, remote


def test_vault_commits_pushes_snapshots_and_verifies(vault, bak_home):
    work, remote = vault
    result = run_cli("create")
    assert result.code == 0, result.envelope
    entry = result.envelope["result"]["targets"][0]
    assert entry["git"]["committed"] and entry["git"]["pushes"] == [{"remote": "origin", "ok": True}]
    assert git("--git-dir", str(remote), "rev-parse", "main") == git("-C", str(work), "rev-parse", "HEAD")
    assert (bak_home / "dest" / "rsync" / "vault" / entry["name"] / "note.md").read_text() == "# hello"
    assert run_cli("verify").code == 0
    time.sleep(1.1)
    again = run_cli("create")
    assert again.envelope["result"]["targets"][0]["git"]["committed"] is False


def test_diverged_remote_is_reported_not_force_pushed(vault, bak_home):
    work, remote = vault
    assert run_cli("create").code == 0
    other = bak_home / "other"
    git("clone", "-q", str(remote), str(other))
    (other / "from-elsewhere.md").write_text("x")
    git("-C", str(other), "add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "-C", str(other), "commit", "-qm", "elsewhere")
    git("-C", str(other), "push", "-q", "origin", "main")
    remote_head = git("--git-dir", str(remote), "rev-parse", "main")
    (work / "note.md").write_text("# local change")
    time.sleep(1.1)
    result = run_cli("create")
    assert result.code == 1
    pushes = result.envelope["result"]["targets"][0]["git"]["pushes"]
    assert pushes[0]["ok"] is False and pushes[0]["diverged"] is True
    assert git("--git-dir", str(remote), "rev-parse", "main") == remote_head
    verify = run_cli("verify")
    assert verify.code == 1 and "remote origin HEAD" in verify.envelope["errors"][0]["message"]


def test_every_manifest_row_holds_the_files_real_checksum(bak_home):
    """New files (rsync's own sum), changed ones, unchanged ones (from the previous manifest) and unchanged
    ones with no manifest to take them from (asked of rsync), each checked with the xxHash reference library."""
    need("rsync")
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=30, size=4096)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=[])
    folder = dest / "rsync" / "files"

    def check(name):
        head, *rows = [json.loads(line) for line in (folder / f"{name}.manifest").read_text().splitlines()]
        files = {r["path"]: r for r in rows if r["type"] == "f"}
        assert head["files"] == len(files) == sum(1 for p in (folder / name).rglob("*") if p.is_file())
        for path, row in files.items():
            assert row["xxh128"] == xxhash.xxh3_128_hexdigest((folder / name / path).read_bytes()), path
        return files

    first = run_cli("create").envelope["result"]["targets"][0]["name"]
    check(first)
    (source / "dir1" / "file1.txt").write_bytes(b"changed content")
    (source / "dir2" / "new.txt").write_bytes(b"a new file")
    (source / "dir3" / "file3.txt").unlink()
    time.sleep(1.05)
    second = run_cli("create").envelope["result"]["targets"][0]["name"]
    rows = check(second)
    assert "dir3/file3.txt" not in rows and "dir2/new.txt" in rows
    # No manifest rows to take unchanged files' sums from (an emptied or unreadable manifest; a snapshot with no
    # manifest at all is no backup, issue 30): they are asked of rsync on the store's host.
    (folder / f"{second}.manifest").write_text("")
    time.sleep(1.05)
    third = run_cli("create").envelope["result"]["targets"][0]
    assert third["copies"][0]["ok"] and third["copies"][0]["stats"]["files_transferred"] == 0
    check(third["name"])


def test_verify_reads_a_big_tree_with_one_rsync_per_core_and_still_finds_a_flipped_byte(bak_home, monkeypatch):
    import bak.methods.rsync as rsync_method

    need("rsync")
    monkeypatch.setattr(rsync_method, "PARALLEL_MIN_BYTES", 0)  # every tree counts as big
    monkeypatch.setattr(rsync_method, "cores", lambda runner: 3)
    source, dest = bak_home / "src", bak_home / "dest"
    make_tree(source, files=40, size=3000)
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=[])
    name = run_cli("create").envelope["result"]["targets"][0]["name"]
    checked = run_cli("verify")
    assert checked.code == 0 and checked.envelope["result"]["checked"][0]["files"] == 42
    victim = dest / "rsync" / "files" / name / "dir7" / "file17.txt"
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[100] ^= 4
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caught = run_cli("verify")
    assert caught.code == 1 and "dir7/file17.txt (content differs)" in caught.envelope["errors"][0]["message"]


# Top-level names the parallel copy deals out by their raw bytes: each lands in one rsync's list.
HOSTILE_TOPS = [b"plain", b"with space", b"-leading-dash", b'quote"and\\back', b"new\nline", b"caf\xc3\xa9",
                b"latin1-\xe9", b".hidden", b"a -> b"]


def entries_of(root):
    """Every entry under root as an independent reader sees it (lstat, readlink, xxHash), by manifest path."""
    found = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            row = {"path": os.path.relpath(path, os.fsencode(root)).decode("utf-8", "surrogateescape"),
                   "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}
            if os.path.islink(path):
                row.update(type="l", target=os.readlink(path).decode("utf-8", "surrogateescape"))
            elif os.path.isdir(path):
                row.update(type="d")
            else:
                with open(path, "rb") as handle:
                    digest = xxhash.xxh3_128_hexdigest(handle.read())
                row.update(type="f", size=st.st_size, mtime=int(st.st_mtime), xxh128=digest)
            found[row["path"]] = row
    return found


def test_a_second_snapshot_by_parallel_rsyncs_is_the_tree_entry_by_entry(bak_home, monkeypatch):
    """Three rsyncs over the top-level names (hostile ones too), excludes anchored and not, files new, changed,
    removed and re-moded: the snapshot is the source minus the excludes, its manifest is what lstat and xxHash
    read, unchanged files are links to the first snapshot's, and the root carries the source's mode and time."""
    import bak.methods.rsync as rsync_method

    need("rsync")
    monkeypatch.setattr(rsync_method, "cores", lambda runner: 3)
    source, dest = bak_home / "src", bak_home / "dest"
    raw = os.fsencode(source)
    for top in HOSTILE_TOPS:
        os.makedirs(os.path.join(raw, top, b"sub"))
        for name in (b"f1", b"f2", b"sub/deep.txt", b"skip.tmp"):
            with open(os.path.join(raw, top, name), "wb") as handle:
                handle.write(os.urandom(700) + top)
    os.mkdir(os.path.join(raw, b"empty"))
    (source / "top file.txt").write_text("at the top")
    (source / "scratch.tmp").write_text("excluded")
    os.symlink(b"plain/f1", os.path.join(raw, b"link -> x"))
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=["*.tmp", "/with space/f2"])
    folder = dest / "rsync" / "files"
    first = run_cli("create").envelope["result"]["targets"][0]
    assert first["copies"][0]["rsyncs"] == 3  # a 1st snapshot too: writing new files is kernel work as well
    (source / "plain" / "f1").write_bytes(b"changed")
    os.unlink(os.path.join(raw, b"new\nline", b"f2"))
    os.chmod(os.path.join(raw, b"-leading-dash", b"f1"), 0o600)
    with open(os.path.join(raw, b"caf\xc3\xa9", b"new"), "wb") as handle:
        handle.write(b"a new file")
    os.makedirs(source / "zz-new" / "inner")
    (source / "zz-new" / "inner" / "n.txt").write_text("new folder")
    os.chmod(source, 0o750)
    os.utime(source, (1_600_000_000, 1_600_000_000))
    time.sleep(1.05)
    hashed_again = []  # files whose sum neither the transfer nor the previous manifest gave
    listing = rsync_method.tree_items
    monkeypatch.setattr(rsync_method, "tree_items", lambda *a, only=None, **k: (hashed_again.append(only),
                                                                                 listing(*a, only=only, **k))[1])
    second = run_cli("create")
    assert second.code == 0, second.envelope
    made = second.envelope["result"]["targets"][0]
    assert made["copies"][0]["rsyncs"] == 3 and hashed_again == []
    snapshot = folder / made["name"]

    def check(name):
        """The snapshot is the source minus the excludes; its manifest is what an independent reader sees."""
        expected = entries_of(source)
        for path in [p for p in expected if p.endswith(".tmp") or p == "with space/f2"]:
            del expected[path]
        found = entries_of(folder / name)
        assert found == expected
        head, *rows = [json.loads(line) for line in (folder / f"{name}.manifest").read_text().splitlines()]
        listed = {row["path"]: row for row in rows}
        root = listed.pop(".")
        assert (root["type"], root["mode"]) == ("d", 0o750) and os.stat(folder / name).st_mtime == 1_600_000_000
        assert listed == found and head["files"] == sum(1 for r in found.values() if r["type"] == "f")
        return [row["path"] for row in rows]

    in_parts = check(made["name"])
    old = folder / first["name"]
    for path in ("quote\"and\\back/sub/deep.txt", "latin1-\udce9/f1", "a -> b/f2"):
        assert os.stat(snapshot / path).st_ino == os.stat(old / path).st_ino, path  # linked, not copied
    for path in ("plain/f1", "-leading-dash/f1"):  # new content; a new mode (a link would change the old copy's)
        assert os.stat(snapshot / path).st_ino != os.stat(old / path).st_ino, path
    assert run_cli("verify").code == 0
    # `parallel: 1` (a spinning disk): one rsync, the same snapshot.
    files_config(bak_home, source=source, dest={"kind": "local", "path": str(dest)}, excludes=["*.tmp", "/with space/f2"],
                 parallel=1)
    (source / "zz-new" / "inner" / "n.txt").write_text("changed again")
    os.utime(source, (1_600_000_000, 1_600_000_000))
    time.sleep(1.05)
    hashed_again.clear()  # verify's own listings
    single = run_cli("create").envelope["result"]["targets"][0]
    assert single["copies"][0]["rsyncs"] == 1 and hashed_again == []
    assert check(single["name"]) == in_parts  # the parts' rows, one after the other, in one rsync's order
