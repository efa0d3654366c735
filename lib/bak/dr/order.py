"""The order in which to bring the homelab back.

A target comes after the targets its `after:` names, and after the guest (a vzdump target) of every
host it runs on or keeps copies on, when the config says which guest a host is (`hosts.NAME.vmid`):
the storage VM that holds PostgreSQL and the NFS share comes back before what needs them. Among the
targets free to go next, guests come first, then databases, files, Docker volumes and the vault, each
in config order. Pure functions: the config in, names out.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from bak.config import Config, Target

# What comes back first when nothing else decides: the guests, then what lives on them.
RANK = {"vzdump": 0, "pg_dump": 1, "rsync": 2, "config": 2, "docker_volume": 3, "vault": 4}


@dataclass(frozen=True)
class Dependency:
    on: str  # the target recovered first
    reason: str


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in `edges` (name -> the names it comes after) as the names along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if state.get(start):
            continue
        path, stack = [start], [iter(edges.get(start, []))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges.get(nxt, [])))
    return None


def topological(names: list[str], edges: dict[str, list[str]], rank: dict[str, int]) -> list[str]:
    """Each name after every name it comes after; of those free to go, the lowest rank, then the first listed.
    Names in `edges` that are not in `names` are ignored. Raises ValueError on a cycle."""
    position = {name: i for i, name in enumerate(names)}
    waiting = {name: {n for n in edges.get(name, []) if n in position and n != name} for name in names}
    followers: dict[str, list[str]] = {name: [] for name in names}
    for name, before in waiting.items():
        for first in before:
            followers[first].append(name)
    ready = [(rank.get(name, 0), position[name], name) for name, before in waiting.items() if not before]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, name = heapq.heappop(ready)
        order.append(name)
        for follower in followers[name]:
            waiting[follower].discard(name)
            if not waiting[follower]:
                heapq.heappush(ready, (rank.get(follower, 0), position[follower], follower))
    if len(order) < len(names):
        raise ValueError("cycle among: " + ", ".join(n for n in names if n not in order))
    return order


def dependencies(config: Config, targets: list[Target]) -> tuple[dict[str, list[Dependency]], list[str]]:
    """Each target's dependencies among `targets`: its `after:`, then the guests of the hosts it runs on
    or keeps copies on. A guest dependency that would close a cycle is left out, and said."""
    names = {t.name for t in targets}
    found: dict[str, list[Dependency]] = {t.name: [Dependency(n, "after: in the config") for n in t.after if n in names]
                                          for t in targets}
    guests: dict[int, list[str]] = {}
    for target in targets:
        if target.method == "vzdump":
            guests.setdefault(target.options["vmid"], []).append(target.name)
    left_out = []
    for target in targets:
        places = [(target.host, "it runs there")] + [
            (config.destinations[d].host, f"its copies on {d} are there") for d in target.destinations]
        for host_name, why in places:
            vmid = config.host(host_name).vmid
            for guest in guests.get(vmid, []) if vmid else []:
                if guest == target.name or any(d.on == guest for d in found[target.name]):
                    continue
                edges = {name: [d.on for d in deps] for name, deps in found.items()}
                edges[target.name] = [*edges[target.name], guest]
                if find_cycle(edges):
                    left_out.append(f"{target.name} after {guest} (host {host_name} is VM {vmid}) would close a cycle: "
                                    f"left out; declare `after:` to order them")
                    continue
                found[target.name].append(Dependency(guest, f"host {host_name} is VM {vmid}: {why}"))
    return found, left_out


def recovery_order(config: Config, targets: list[Target]) -> tuple[list[Target], dict[str, list[Dependency]], list[str]]:
    """(targets in recovery order, each one's dependencies, guest dependencies left out to avoid a cycle)."""
    found, left_out = dependencies(config, targets)
    by_name = {t.name: t for t in targets}
    order = topological([t.name for t in targets], {n: [d.on for d in deps] for n, deps in found.items()},
                        {t.name: RANK[t.method] for t in targets})
    return [by_name[name] for name in order], found, left_out
