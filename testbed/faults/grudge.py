"""Grudges (Jepsen's partition description) and their builders.

A grudge maps a node to the set of nodes it *drops traffic from*: ``{"e1": {"e2"}}``
means packets from e2 vanish on arrival at e1 (and e1 -> e2 still flows unless
``"e2": {"e1"}`` is in the grudge too). Any partition, symmetric or not, is a grudge.

Builders are pure functions of their arguments and a seeded ``random.Random``: node
collections are sorted before shuffling, so the same seed gives the same grudge on every
run regardless of set ordering. Mesh-aware cuts take a *role map* (role -> hosts):

- ``sidecars``: hosts running a sidecar (the data plane),
- ``control``: hosts running the control plane (Pilot),
- ``registry``: hosts running an etcd member.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

__all__ = ["Grudge", "GrudgeError", "complete", "isolate_one", "random_halves", "bisect",
           "majorities_ring", "bridge", "cut_between", "control_plane_cut", "registry_split",
           "data_plane_split", "GRUDGE_BUILDERS", "MESH_CUTS", "ROLES"]

ROLES = ("sidecars", "control", "registry")


class GrudgeError(ValueError):
    """A grudge or a builder's input is invalid."""


@dataclass(frozen=True)
class Grudge(Mapping[str, frozenset[str]]):
    """An immutable, hashable grudge. Build with :meth:`of`; nodes with nothing to drop
    are left out, so two grudges describing the same partition compare equal."""

    entries: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def of(cls, mapping: Mapping[str, Iterable[str]]) -> "Grudge":
        entries = []
        for node in sorted(mapping):
            srcs = frozenset(mapping[node])
            if node in srcs:
                raise GrudgeError(f"grudge: node {node!r} cannot drop traffic from itself")
            if srcs:
                entries.append((node, srcs))
        return cls(tuple(entries))

    def __getitem__(self, node: str) -> frozenset[str]:
        for n, srcs in self.entries:
            if n == node:
                return srcs
        raise KeyError(node)

    def __iter__(self) -> Iterator[str]:
        return (n for n, _ in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def pairs(self) -> list[tuple[str, str]]:
        """One-way cuts ``(src, dst)``: traffic from src is dropped at dst. Sorted."""
        return sorted((src, dst) for dst, srcs in self.entries for src in srcs)

    def nodes(self) -> frozenset[str]:
        return frozenset(n for pair in self.pairs() for n in pair)

    def to_dict(self) -> dict[str, list[str]]:
        return {n: sorted(srcs) for n, srcs in self.entries}

    def describe(self) -> str:
        return "; ".join(f"{n} drops {','.join(sorted(s))}" for n, s in self.entries) or "(nothing)"


def _nodes(nodes: Iterable[str], at_least: int, what: str) -> list[str]:
    out = sorted(set(nodes))
    if len(out) < at_least:
        raise GrudgeError(f"{what} needs at least {at_least} nodes, got {len(out)}: {out}")
    return out


def complete(components: Iterable[Iterable[str]]) -> Grudge:
    """Every node drops traffic from every node outside its component (Jepsen's
    complete-grudge). Components must be disjoint."""
    comps = [frozenset(c) for c in components]
    seen: set[str] = set()
    for c in comps:
        if seen & c:
            raise GrudgeError(f"complete: components overlap on {sorted(seen & c)}")
        seen |= c
    universe = frozenset(seen)
    return Grudge.of({n: universe - c for c in comps for n in c})


def bisect(nodes: Iterable[str]) -> list[list[str]]:
    """Split a list into two halves, the first one smaller (as given, no shuffle)."""
    ns = list(nodes)
    half = len(ns) // 2
    return [ns[:half], ns[half:]]


def isolate_one(nodes: Iterable[str], rng: random.Random) -> Grudge:
    """One node chosen at random is cut off from all the others, both ways."""
    ns = _nodes(nodes, 2, "isolate-one")
    victim = rng.choice(ns)
    return complete([[victim], [n for n in ns if n != victim]])


def random_halves(nodes: Iterable[str], rng: random.Random) -> Grudge:
    """Shuffle, then cut into a minority and a majority (Jepsen's random-halves)."""
    ns = _nodes(nodes, 2, "random-halves")
    rng.shuffle(ns)
    return complete(bisect(ns))


def majorities_ring(nodes: Iterable[str], rng: random.Random) -> Grudge:
    """Every node receives from a majority (itself included), and no two nodes see the
    same majority (Jepsen's majorities-ring): on a shuffled ring, each window of
    ``n//2 + 1`` consecutive nodes is the view of its middle node."""
    ns = _nodes(nodes, 3, "majorities-ring")
    rng.shuffle(ns)
    n, m = len(ns), len(ns) // 2 + 1
    universe = frozenset(ns)
    grudge = {}
    for i in range(n):
        window = [ns[(i + j) % n] for j in range(m)]
        grudge[window[m // 2]] = universe - frozenset(window)
    return Grudge.of(grudge)


def bridge(nodes: Iterable[str], rng: random.Random) -> Grudge:
    """Two halves that cannot talk, and one node (the bridge) that talks to both."""
    ns = _nodes(nodes, 3, "bridge")
    rng.shuffle(ns)
    first, second = bisect(ns)
    the_bridge = second[0]
    base = complete([first, second])
    return Grudge.of({n: srcs - {the_bridge} for n, srcs in base.items() if n != the_bridge})


def cut_between(a: Iterable[str], b: Iterable[str]) -> Grudge:
    """Cut every host of ``a`` from every host of ``b``, both ways; traffic inside each set,
    and with hosts in neither, is untouched. A host in both sets is not cut from itself."""
    aa, bb = frozenset(a), frozenset(b)
    if not aa or not bb:
        raise GrudgeError(f"cut-between needs two non-empty host sets, got {sorted(aa)} and {sorted(bb)}")
    g: dict[str, set[str]] = {}
    for x in aa:
        for y in bb:
            if x != y:
                g.setdefault(x, set()).add(y)
                g.setdefault(y, set()).add(x)
    return Grudge.of(g)


def _role(roles: Mapping[str, Iterable[str]], name: str) -> list[str]:
    if name not in roles:
        raise GrudgeError(f"role map has no {name!r} role; roles given: {', '.join(sorted(roles)) or 'none'}"
                          f" (known roles: {', '.join(ROLES)})")
    return sorted(set(roles[name]))


def control_plane_cut(roles: Mapping[str, Iterable[str]], rng: random.Random | None = None) -> Grudge:
    """Sidecars cannot reach the control plane (nor it them); everything else flows.
    Note: cuts are per host pair, so anything else running on a control host is cut too."""
    return cut_between(_role(roles, "sidecars"), _role(roles, "control"))


def registry_split(roles: Mapping[str, Iterable[str]], rng: random.Random) -> Grudge:
    """The etcd members split into a minority and a majority (random halves); clients of
    the registry still reach every member."""
    return random_halves(_role(roles, "registry"), rng)


def data_plane_split(roles: Mapping[str, Iterable[str]], rng: random.Random) -> Grudge:
    """Sidecar hosts split into random halves; both halves still reach the control plane
    and the registry."""
    return random_halves(_role(roles, "sidecars"), rng)


# name (as written in YAML) -> builder(nodes, rng)
GRUDGE_BUILDERS = {
    "isolate-one": isolate_one,
    "random-halves": random_halves,
    "majorities-ring": majorities_ring,
    "bridge": bridge,
}

# name -> builder(roles, rng)
MESH_CUTS = {
    "control-plane": control_plane_cut,
    "registry-quorum": registry_split,
    "data-plane": data_plane_split,
}
