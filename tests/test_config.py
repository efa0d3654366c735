"""Config: every error at once with its key path, exit 2, nothing run."""

import copy

import pytest
import yaml

from bak import config
from conftest import run_cli, write_config

BASE = {
    "version": 1,
    "destinations": {"here": {"kind": "local", "path": "/tmp/bak-test-dest"}},
    "policies": {"standard": {"keep_daily": 7}},
    "targets": [{"name": "db", "method": "pg_dump", "destinations": ["here"], "policy": "standard",
                 "pg_dump": {"database": "app"}}],
}


def check(tmp_path, data=None, text=None):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    else:
        write_config(path, data)
    return run_cli("config", "check", "--config", str(path))


def test_valid_config_passes_and_fills_defaults(bak_home):
    result = check(bak_home, BASE)
    assert result.code == 0, result.envelope
    assert result.envelope["result"]["targets"] == 1
    loaded = config.from_data(copy.deepcopy(BASE))
    target = loaded.targets[0]
    assert target.host == "local" and target.interval.total_seconds() == 86400
    assert target.options["format"] == "custom" and target.options["port"] == 5432


def test_example_config_is_valid_and_names_the_seed_homelab(bak_home):
    from click.testing import CliRunner

    from bak.cli import cli

    text = CliRunner().invoke(cli, ["config", "example"]).stdout
    loaded = config.from_data(yaml.safe_load(text))
    assert {t.name for t in loaded.targets} >= {"vm-100", "vm-105", "pg-app", "vault", "docker-grafana"}
    import ipaddress

    assert ipaddress.ip_address(loaded.hosts["store"].address).is_private  # the spec's LAN; never connected to
    assert "VM 104" in loaded.raw["hosts"]["store"]["description"]
    assert check(bak_home, text=text).code == 0


def test_malformed_yaml_names_line_and_column(bak_home):
    result = check(bak_home, text="version: 1\ntargets: [\n  - name: x\n")
    assert result.code == 2
    error = result.envelope["errors"][0]
    assert error["code"] == "config_invalid" and "malformed YAML" in error["message"]
    assert error["where"].endswith(":3:3") or ":" in error["where"]
    assert result.envelope["result"] is None


def test_every_error_is_reported_at_once_with_its_path(bak_home):
    data = copy.deepcopy(BASE)
    data["surprise"] = True
    data["targets"][0]["colour"] = "blue"
    data["targets"][0]["interval"] = 6
    data["targets"][0]["pg_dump"]["port"] = "5432"
    data["targets"].append({"name": "x;rm -rf /", "method": "vzdump", "destinations": ["nowhere"], "vzdump": {"vmid": 7}})
    result = check(bak_home, data)
    assert result.code == 2
    where = {e["where"]: e["message"] for e in result.envelope["errors"]}
    assert "unknown key 'surprise'" in where["surprise"]
    assert "unknown key 'colour'" in where["targets[0].colour"]
    assert "not of type 'string'" in where["targets[0].interval"]
    assert "not of type 'integer'" in where["targets[0].pg_dump.port"]
    assert "not a plain name" in where["targets[1].name"]
    assert "less than the minimum" in where["targets[1].vzdump.vmid"]
    assert "required key 'storage'" in where["targets[1].vzdump.storage"]


@pytest.mark.parametrize("bad_name", ["a;b", "$(reboot)", "../../etc", "-rf", "a b", "`id`", "x\ny", ""])
def test_injection_attempts_in_names_are_rejected(bak_home, bad_name):
    data = copy.deepcopy(BASE)
    data["targets"][0]["name"] = bad_name
    data["targets"][0]["pg_dump"]["database"] = bad_name
    result = check(bak_home, data)
    assert result.code == 2
    paths = {e["where"] for e in result.envelope["errors"]}
    assert {"targets[0].name", "targets[0].pg_dump.database"} <= paths


def test_a_command_with_a_bad_config_runs_nothing(bak_home):
    """`ssh check` would connect to hosts: with an invalid config it must not even start."""
    data = copy.deepcopy(BASE)
    data["hosts"] = {"pve": {"address": "127.0.0.1", "port": 1, "bogus": 1}}
    write_config(bak_home / "config.yaml", data)
    result = run_cli("ssh", "check")
    assert result.code == 2 and result.envelope["result"] is None
    assert result.envelope["errors"][0]["where"] == "hosts.pve.bogus"


def test_names_that_point_nowhere_are_reported(bak_home):
    data = copy.deepcopy(BASE)
    data["targets"][0]["destinations"] = ["here", "mars"]
    data["targets"][0]["policy"] = "forever"
    data["targets"][0]["host"] = "ghost"
    data["targets"].append(copy.deepcopy(data["targets"][0]))
    data["schedules"] = [{"name": "s", "targets": ["db", "nope"], "cron": "0 * * * *"}]
    result = check(bak_home, data)
    assert result.code == 2
    where = {e["where"]: e["message"] for e in result.envelope["errors"]}
    assert where["targets[0].destinations[1]"] == "unknown destination 'mars'"
    assert where["targets[0].policy"] == "unknown policy 'forever'"
    assert where["targets[0].host"] == "unknown host 'ghost'"
    assert "duplicate target name" in where["targets[1].name"]
    assert where["schedules[0].targets[1]"] == "unknown target 'nope'"


def test_options_block_of_another_method_is_rejected(bak_home):
    data = copy.deepcopy(BASE)
    data["targets"][0]["vzdump"] = {"vmid": 100, "storage": "local"}
    result = check(bak_home, data)
    assert result.code == 2
    assert result.envelope["errors"][0]["where"] == "targets[0].vzdump"


def test_missing_config_file_is_bad_input(bak_home):
    result = run_cli("config", "check", "--config", str(bak_home / "absent.yaml"))
    assert result.code == 2
    assert result.envelope["errors"][0]["code"] == "config_missing"


def test_local_is_a_reserved_host_name(bak_home):
    data = copy.deepcopy(BASE)
    data["hosts"] = {"local": {"address": "127.0.0.1"}}
    result = check(bak_home, data)
    assert result.code == 2
    assert result.envelope["errors"][0]["where"] == "hosts.local"


def _walk(node, path="$"):
    if not isinstance(node, dict):
        return
    yield path, node
    for key in ("properties",):
        for name, sub in node.get(key, {}).items():
            yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict) and node["items"].get("type") == "object":
        yield from _walk(node["items"], f"{path}[]")


def test_every_schema_key_has_a_description_and_an_example_and_objects_are_closed():
    for path, node in _walk(config.schema()):
        assert node.get("description"), f"{path} has no description"
        assert node.get("examples"), f"{path} has no example"
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def test_schema_examples_validate_against_their_own_schema():
    from jsonschema import Draft202012Validator

    for path, node in _walk(config.schema()):
        for example in node.get("examples", []):
            errors = list(Draft202012Validator(node).iter_errors(example))
            assert not errors, f"example of {path} is invalid: {errors[0].message}"
