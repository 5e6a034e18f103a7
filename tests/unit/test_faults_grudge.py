"""Grudge builders: structural properties for many seeds, determinism, mesh-aware cuts."""
from __future__ import annotations

import random

import pytest

from testbed.faults.grudge import (Grudge, GrudgeError, bridge, complete, control_plane_cut, cut_between,
                                   data_plane_split, isolate_one, majorities_ring, random_halves, registry_split)

NODES5 = ["n1", "n2", "n3", "n4", "n5"]


def sees(g: Grudge, node: str, nodes) -> set[str]:
    """Nodes whose traffic reaches ``node`` (itself included)."""
    return set(nodes) - set(g.get(node, frozenset()))


def components(g: Grudge, nodes) -> list[set[str]]:
    """Groups of nodes that reach each other both ways and nobody else."""
    out: list[set[str]] = []
    for n in nodes:
        group = {m for m in nodes if m not in g.get(n, ()) and n not in g.get(m, ())}
        if group not in out:
            out.append(group)
    return out


def test_grudge_value_semantics():
    g = Grudge.of({"a": {"b"}, "b": set(), "c": ["a", "b"]})
    assert dict(g) == {"a": frozenset({"b"}), "c": frozenset({"a", "b"})}       # empty entries dropped
    assert g.pairs() == [("a", "c"), ("b", "a"), ("b", "c")]
    assert g.nodes() == {"a", "b", "c"} and g.to_dict() == {"a": ["b"], "c": ["a", "b"]}
    with pytest.raises(GrudgeError, match="itself"):
        Grudge.of({"a": {"a"}})


def test_complete():
    g = complete([["a"], ["b", "c"]])
    assert g.to_dict() == {"a": ["b", "c"], "b": ["a"], "c": ["a"]}
    with pytest.raises(GrudgeError, match="overlap"):
        complete([["a", "b"], ["b"]])


@pytest.mark.parametrize("seed", range(20))
def test_isolate_one(seed):
    g = isolate_one(NODES5, random.Random(seed))
    comps = sorted(components(g, NODES5), key=len)
    assert [len(c) for c in comps] == [1, 4]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7])
def test_random_halves_minority_and_majority(n):
    nodes = [f"n{i}" for i in range(n)]
    g = random_halves(nodes, random.Random(n))
    comps = sorted(components(g, nodes), key=len)
    assert [len(c) for c in comps] == [n // 2, n - n // 2]


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
@pytest.mark.parametrize("seed", range(5))
def test_majorities_ring(n, seed):
    nodes = [f"n{i}" for i in range(n)]
    g = majorities_ring(nodes, random.Random(seed))
    views = [frozenset(sees(g, x, nodes)) for x in nodes]
    # a majority, itself included
    assert all(len(v) == n // 2 + 1 and x in v for x, v in zip(nodes, views, strict=True))
    assert len(set(views)) == n                                                   # all different


@pytest.mark.parametrize("seed", range(20))
def test_bridge(seed):
    g = bridge(NODES5, random.Random(seed))
    full = [x for x in NODES5 if len(sees(g, x, NODES5)) == 5 and all(x not in g.get(y, ()) for y in NODES5)]
    assert len(full) == 1                               # the bridge talks to everybody, both ways
    rest = [x for x in NODES5 if x not in full]
    comps = components(Grudge.of({k: v - set(full) for k, v in g.items()}), rest)
    assert sorted(len(c) for c in comps) == [2, 2]      # the two sides do not talk


@pytest.mark.parametrize("builder", [isolate_one, random_halves, majorities_ring, bridge])
def test_builders_are_deterministic_per_seed_and_ignore_input_order(builder):
    a = builder(NODES5, random.Random(42))
    b = builder(list(reversed(NODES5)), random.Random(42))
    c = builder(set(NODES5), random.Random(42))
    assert a == b == c
    assert len({builder(NODES5, random.Random(s)) for s in range(30)}) > 1      # the seed matters


def test_too_few_nodes():
    with pytest.raises(GrudgeError, match="at least 3"):
        majorities_ring(["a", "b"], random.Random(0))
    with pytest.raises(GrudgeError, match="at least 2"):
        isolate_one(["a"], random.Random(0))


ROLES = {"sidecars": ["h1", "h2", "h3"], "control": ["cp"], "registry": ["e1", "e2", "e3"]}


def test_control_plane_cut_touches_only_sidecar_control_pairs():
    g = control_plane_cut(ROLES)
    assert set(g.pairs()) == {(s, "cp") for s in ROLES["sidecars"]} | {("cp", s) for s in ROLES["sidecars"]}


def test_registry_split_cuts_members_only():
    g = registry_split(ROLES, random.Random(1))
    assert g.nodes() <= set(ROLES["registry"])
    assert sorted(len(c) for c in components(g, ROLES["registry"])) == [1, 2]


def test_data_plane_split_keeps_control_and_registry_reachable():
    g = data_plane_split(ROLES, random.Random(3))
    assert g.nodes() <= set(ROLES["sidecars"]) and g.pairs()


def test_cut_between_overlapping_sets_and_missing_roles():
    g = cut_between(["a", "b"], ["b", "c"])
    assert ("b", "b") not in g.pairs() and ("a", "c") in g.pairs() and ("a", "b") in g.pairs()
    with pytest.raises(GrudgeError, match="no 'control' role"):
        control_plane_cut({"sidecars": ["h1"]})
