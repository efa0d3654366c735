"""A restore goes on to the next copy when one is damaged, whatever the method, and says which copy it skipped
and why (issue 30, item 6). Damage is real: bytes flipped or cut in the middle of a copy on its destination."""

from conftest import run_cli
from test_docker import app, engine, tree  # noqa: F401  (fixtures: a real podman engine and a volume)
from test_docker import lab as docker_lab
from test_pg import PASSWORD, lab_config, pg  # noqa: F401  (the module fixture: a database with tables)


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))


def assert_skipped_first_copy(result, store: str):
    assert result.code == 0, result.envelope
    [skipped] = result.envelope["result"]["skipped"]
    assert skipped["store"] == store and ("sha256" in skipped["reason"] or "read to its end" in skipped["reason"]), skipped
    assert any(w.startswith(f"skipped the copy on {store}") for w in result.envelope["warnings"])
    assert result.envelope["result"]["store"] != store


def test_a_pg_restore_falls_back_to_an_intact_copy(bak_home, pg, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BAK_TEST_PG_PASSWORD", PASSWORD)
    for number, (fmt, jobs, how) in enumerate([("custom", 1, "flip"), ("custom", 2, "cut"), ("plain_gz", 1, "flip"),
                                              ("plain_gz", 1, "cut")]):
        if fmt == "custom":
            lab_config(bak_home, pg, format=fmt)
        else:  # a plain dump replays its owners: restored by a superuser
            monkeypatch.setenv("BAK_TEST_PG_PASSWORD", pg.password)
            lab_config(bak_home, pg, format=fmt, user=pg.superuser)
        created = run_cli("create")
        assert created.code == 0, created.envelope
        name = created.envelope["result"]["targets"][0]["name"]
        damage(bak_home / "local" / "postgresql" / "pg-app" / name, how)
        into = f"fallback_{number}"
        owner = ["--no-owner"] if fmt == "custom" else []  # a plain dump is restored as it is
        restored = run_cli("restore", "--target", "pg-app", "--into", into, *owner,
                           *(["--jobs", str(jobs)] if jobs > 1 else []))
        assert_skipped_first_copy(restored, "local")
        assert pg.psql("SELECT count(*) FROM users", db=into).strip() == "5000", (fmt, jobs, how)
        assert into in pg.psql("SELECT string_agg(datname, ',') FROM pg_database")
        assert "bak_incoming" not in pg.psql("SELECT string_agg(datname, ',') FROM pg_database")
        # --from names the damaged copy: then nothing else is tried, and nothing is left behind
        chosen = run_cli("restore", "--target", "pg-app", "--from", "local", "--into", f"{into}_from", *owner)
        assert chosen.code == 1 and chosen.envelope["errors"][0]["code"] == "verify_failed", chosen.envelope
        assert f"{into}_from" not in pg.psql("SELECT string_agg(datname, ',') FROM pg_database")
        for folder in ("local", "nfs"):
            for path in (bak_home / folder / "postgresql" / "pg-app").iterdir():
                path.unlink()


def test_a_volume_restore_falls_back_to_an_intact_copy(engine, app, bak_home):  # noqa: F811
    destinations = {"nfs": {"kind": "local", "path": str(bak_home / "dest")},
                    "usb": {"kind": "local", "path": str(bak_home / "usb")}}
    docker_lab(bak_home, app, "podman", destinations=destinations)
    assert run_cli("create").code == 0
    backed_up = tree(app.path)
    [archive] = sorted((bak_home / "dest" / "docker-volumes" / "db").glob("*.tar.gz"))
    damage(archive, "flip")
    new = run_cli("restore", "--target", "db")
    assert_skipped_first_copy(new, "nfs")
    # over the volume itself: the damaged copy is found before anything is emptied
    (app.path / "written-after").write_text("kept in the safety copy")
    forced = run_cli("restore", "--target", "db", "--into", app.volume, "--force")
    assert_skipped_first_copy(forced, "nfs")
    assert tree(app.path) == backed_up
    assert len(list((bak_home / "usb" / "safety" / "db").glob("*.tar.gz"))) == 1  # one safety copy, of the real volume
    assert not list((bak_home / "dest").glob("safety/db/*.tar.gz"))
    engine.podman("volume", "rm", new.envelope["result"]["volume"])
