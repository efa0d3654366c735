"""The atomic artifact writer: nothing under its final name unless complete, hashed while streaming."""

import hashlib
import os
import signal
import subprocess
import sys
from datetime import datetime

import pytest

from bak import config as bak_config
from bak.catalog import Listing, index_folder
from bak.errors import WriteFailed
from bak.methods.base import Context, clear_leftovers
from bak.run import Hosts
from bak.stores.fanout import FanOut
from bak.stores.local import LocalStore
from bak.stores.remote import RemoteStore
from conftest import REPO, need


def stream(fan, data: bytes, chunk: int = 1 << 16):
    for i in range(0, len(data), chunk):
        fan.write(data[i:i + chunk])


def test_complete_file_passes_sha256sum_c_and_is_private(tmp_path):
    need("sha256sum")
    data = os.urandom(3 << 20)
    fan = FanOut([LocalStore("here", str(tmp_path / "dest"))], "postgresql", "pg-app-2026-11-30_120000.dump")
    stream(fan, data)
    result = fan.commit()
    folder = tmp_path / "dest" / "postgresql"
    assert result.ok and result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)
    assert sorted(p.name for p in folder.iterdir()) == ["pg-app-2026-11-30_120000.dump", "pg-app-2026-11-30_120000.dump.sha256"]
    check = subprocess.run(["sha256sum", "-c", "pg-app-2026-11-30_120000.dump.sha256"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip().endswith(": OK")
    assert (folder / "pg-app-2026-11-30_120000.dump").stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700


def test_nothing_final_while_writing_and_abort_cleans_up(tmp_path):
    store = LocalStore("here", str(tmp_path))
    fan = FanOut([store], "x", "a.dump")
    fan.write(b"half")
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["a.dump.partial"]
    fan.abort()
    assert list((tmp_path / "x").iterdir()) == []


WRITER = """
import sys
sys.path.insert(0, {lib!r})
from bak.stores.fanout import FanOut
from bak.stores.local import LocalStore
fan = FanOut([LocalStore("here", {dest!r})], "postgresql", "pg-app-2026-11-30_120000.dump")
while chunk := sys.stdin.buffer.read(65536):
    fan.write(chunk)
    print(fan.size, flush=True)
fan.commit()
"""


def test_sigkill_mid_stream_leaves_only_the_partial(tmp_path):
    dest = tmp_path / "dest"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(lib=str(REPO / "lib"), dest=str(dest))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for _ in range(20):
        proc.stdin.write(os.urandom(65536))
        proc.stdin.flush()
    while int(proc.stdout.readline() or 0) < 20 * 65536:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in (dest / "postgresql").iterdir())
    assert names == ["pg-app-2026-11-30_120000.dump.partial"]
    # The next run of that target sees the leftover, finds no process writing it, and removes it.
    store = LocalStore("here", str(dest))
    listing = index_folder("here", "postgresql", store.list("postgresql"))
    backups, leftovers = listing.of_key("pg_dump", "app")
    assert backups == [] and [p.name for p in leftovers] == ["pg-app-2026-11-30_120000.dump.partial"]
    config = bak_config.from_data({"version": 1})
    ctx = Context(config, Hosts(config), None, datetime.now())
    clear_leftovers(ctx, store, Listing("here", "postgresql", [], leftovers, []))
    assert list((dest / "postgresql").iterdir()) == []
    assert ctx.warnings == ["removed postgresql/pg-app-2026-11-30_120000.dump.partial on here, left by an interrupted run"]


def test_full_disk_is_a_clear_error_and_leaves_no_file(tiny_disk):
    fan = FanOut([LocalStore("tiny", str(tiny_disk))], "postgresql", "pg-app-2026-11-30_120000.dump")
    with pytest.raises(WriteFailed) as caught:
        stream(fan, os.urandom(3 << 20))
    assert caught.value.code == "disk_full"
    assert "is full" in caught.value.message and "prune" in caught.value.hint
    leftovers = [p.name for p in (tiny_disk / "postgresql").iterdir()]
    assert leftovers == []


def test_one_full_destination_does_not_cost_the_other(tmp_path, tiny_disk):
    data = os.urandom(2 << 20)
    fan = FanOut([LocalStore("tiny", str(tiny_disk)), LocalStore("big", str(tmp_path / "big"))], "postgresql", "a.dump")
    stream(fan, data)
    result = fan.commit()
    by_store = {c.store: c for c in result.copies}
    assert not result.ok
    assert by_store["tiny"].ok is False and by_store["tiny"].error["code"] == "disk_full"
    assert by_store["big"].ok is True
    assert (tmp_path / "big" / "postgresql" / "a.dump").read_bytes() == data
    assert not (tiny_disk / "postgresql" / "a.dump").exists()


def test_remote_write_is_atomic_and_checkable_on_the_remote_side(sshd, bak_home):
    known = sshd.trust(bak_home / "known_hosts")
    cfg = bak_config.from_data({"version": 1, "hosts": {"box": sshd.host_config(known)}})
    remote_root = bak_home / "remote"
    data = os.urandom(5 << 20)
    with Hosts(cfg) as hosts:
        runner = hosts.runner("box")
        store = RemoteStore("nfs", str(remote_root), runner)
        fan = FanOut([store], "postgresql", "pg-app-2026-11-30_120000.dump")
        stream(fan, data[: 1 << 20])
        assert [e.name for e in store.list("postgresql")] == ["pg-app-2026-11-30_120000.dump.partial"]
        stream(fan, data[1 << 20:])
        result = fan.commit()
        assert result.ok
        check = runner.run(["sha256sum", "-c", "pg-app-2026-11-30_120000.dump.sha256"], check=False)
        # sha256sum -c resolves names against the working directory: run it there.
        check = runner.run(["sh", "-c", 'cd "$1" && sha256sum -c "$2"', "sh", str(remote_root / "postgresql"),
                            "pg-app-2026-11-30_120000.dump.sha256"])
        assert check.stdout_text.strip().endswith(": OK")
        assert sorted(e.name for e in store.list("postgresql")) == ["pg-app-2026-11-30_120000.dump",
                                                                     "pg-app-2026-11-30_120000.dump.sha256"]
        mode = runner.run(["stat", "-c", "%a", str(remote_root / "postgresql" / "pg-app-2026-11-30_120000.dump")]).stdout_text
        assert mode.strip() == "600"
        assert store.usage().free > 0
    assert (remote_root / "postgresql" / "pg-app-2026-11-30_120000.dump").read_bytes() == data


def test_two_destinations_get_identical_bytes_from_one_stream(tmp_path):
    data = os.urandom(1 << 20)
    fan = FanOut([LocalStore("a", str(tmp_path / "a")), LocalStore("b", str(tmp_path / "b"))], "f", "x.dump")
    stream(fan, data)
    result = fan.commit()
    assert result.ok
    for root in ("a", "b"):
        assert (tmp_path / root / "f" / "x.dump").read_bytes() == data
        assert (tmp_path / root / "f" / "x.dump.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  x.dump\n"
