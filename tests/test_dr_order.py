"""The recovery order of `bak dr plan`: every `after:` honoured (property test), guests before what lives on
them, the default order by kind, and `after:` mistakes as config errors with their key paths."""

import copy

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bak import config
from bak.dr.order import RANK, find_cycle, recovery_order, topological
from conftest import run_cli, write_config


def example(**changes):
    data = yaml.safe_load(config.example_text())
    for key, value in changes.items():
        data[key] = value
    return data


def names(order):
    return [t.name for t in order]


@st.composite
def acyclic_graphs(draw):
    """Names with edges only to names listed before them in a hidden order: a DAG, in any listing order."""
    count = draw(st.integers(1, 12))
    hidden = [f"t{i}" for i in range(count)]
    edges = {name: sorted(set(draw(st.lists(st.sampled_from(hidden[:i]), max_size=4)))) if i else []
             for i, name in enumerate(hidden)}
    listed = draw(st.permutations(hidden))
    rank = {name: draw(st.integers(0, 4)) for name in hidden}
    return listed, edges, rank


@settings(max_examples=300, deadline=None)
@given(acyclic_graphs())
def test_topological_order_honours_every_edge_and_else_ranks_then_listing(graph):
    listed, edges, rank = graph
    order = topological(listed, edges, rank)
    assert sorted(order) == sorted(listed)
    place = {name: i for i, name in enumerate(order)}
    for name, before in edges.items():
        assert all(place[first] < place[name] for first in before), (name, before, order)
    # With no edges at all, the order is by rank, then as listed.
    assert topological(listed, {}, rank) == sorted(listed, key=lambda n: (rank[n], listed.index(n)))
    assert find_cycle(edges) is None


@settings(max_examples=200, deadline=None)
@given(acyclic_graphs(), st.data())
def test_a_back_edge_is_found_as_a_cycle(graph, data):
    listed, edges, rank = graph
    with_edges = [n for n in listed if edges[n]]
    if not with_edges:
        return
    name = data.draw(st.sampled_from(with_edges))
    first = data.draw(st.sampled_from(edges[name]))
    looped = copy.deepcopy(edges)
    looped[first] = [*looped[first], name]  # first after name, name after first
    cycle = find_cycle(looped)
    assert cycle is not None
    for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        assert b in looped[a], (cycle, looped)


def test_example_homelab_brings_the_storage_vm_back_first_then_guests_databases_files_volumes_vault():
    loaded = config.from_data(example())
    order, found, left_out = recovery_order(loaded, [t for t in loaded.targets if t.enabled])
    assert names(order) == ["vm-104", "vm-100", "vm-101", "vm-102", "vm-103", "vm-105", "pg-app", "files-main",
                            "claude-config", "docker-grafana", "vault"]
    assert left_out == []
    assert {d.on for d in found["pg-app"]} == {"vm-104"}  # pg-app runs on host store, which is VM 104
    assert {d.on: d.reason for d in found["files-main"]} == {
        "vm-103": "host main is VM 103: it runs there", "vm-104": "host store is VM 104: its copies on nfs are there"}
    assert [d.on for d in found["docker-grafana"]][0] == "pg-app"  # declared `after:` first
    methods = [t.method for t in order]
    assert [RANK[m] for m in methods if m != "vzdump"] == sorted(RANK[m] for m in methods if m != "vzdump")


def test_without_host_guests_the_order_is_by_kind_then_config_order():
    data = example()
    for host in data["hosts"].values():
        host.pop("vmid", None)
    data["targets"] = list(reversed(data["targets"]))
    for target in data["targets"]:
        target.pop("after", None)
    loaded = config.from_data(data)
    order, found, _ = recovery_order(loaded, loaded.targets)
    assert names(order) == ["vm-105", "vm-104", "vm-103", "vm-102", "vm-101", "vm-100", "pg-app", "claude-config",
                            "files-main", "docker-grafana", "vault"]
    assert all(not deps for deps in found.values())


def test_declared_after_overrides_the_kind_order():
    data = example()
    data["targets"][3]["after"] = ["pg-app"]  # vm-103 only once the database is back
    loaded = config.from_data(data)
    order = names(recovery_order(loaded, loaded.targets)[0])
    assert order.index("vm-104") < order.index("pg-app") < order.index("vm-103")


def test_guests_that_keep_copies_on_each_other_are_not_forced_into_a_cycle():
    data = example()
    data["hosts"]["pve"]["vmid"] = 103  # made up: vm-104's pve-local copies would sit on VM 103 ...
    loaded = config.from_data(data)   # ... and vm-103's nfs copies sit on VM 104
    order, found, left_out = recovery_order(loaded, loaded.targets)
    assert len(left_out) >= 1 and "would close a cycle" in left_out[0]
    assert find_cycle({n: [d.on for d in deps] for n, deps in found.items()}) is None
    assert sorted(names(order)) == sorted(t.name for t in loaded.targets)


def test_after_mistakes_are_config_errors_with_key_paths(bak_home):
    data = example()
    data["targets"][3]["after"] = ["vm-104", "nope"]
    data["targets"][4]["after"] = ["vm-103"]
    data["targets"][5]["after"] = ["vm-105"]
    write_config(bak_home / "config.yaml", data)
    result = run_cli("config", "check")
    assert result.code == 2
    found = {(e["where"], e["message"]) for e in result.envelope["errors"]}
    assert ("targets[3].after[1]", "unknown target 'nope'") in found
    assert ("targets[5].after[0]", "target 'vm-105' cannot come after itself") in found
    assert ("targets[3].after", "recovery order has a cycle: vm-103 -> vm-104 -> vm-103 (each after the next)") in found
    data["targets"][3]["after"] = ["vm 104"]
    write_config(bak_home / "config.yaml", data)
    assert any(e["where"] == "targets[3].after[0]" for e in run_cli("config", "check").envelope["errors"])
    data["targets"][3]["after"] = ["vm-104\n"]  # names match whole strings
    write_config(bak_home / "config.yaml", data)
    assert any(e["where"] == "targets[3].after[0]" for e in run_cli("config", "check").envelope["errors"])
