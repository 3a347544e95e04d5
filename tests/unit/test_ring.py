"""Rendezvous hashing: owners are deterministic, move minimally when nodes
come and go, and follow the nodes' weights. The statistical bounds are wide
enough (many standard deviations) that a correct ring never fails them."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import conveyor
from conveyor.core.ring import RendezvousRing, bucket_of, bucket_owners, stable_hash

KEYS = [f"key-{i}" for i in range(10_000)]


def test_owner_is_deterministic_and_independent_of_node_order() -> None:
    nodes = ["a", "b", "c", "d", "e"]
    first = RendezvousRing(nodes).assign(KEYS)
    again = RendezvousRing(nodes).assign(KEYS)
    shuffled = RendezvousRing(list(reversed(nodes))).assign(KEYS)
    as_weights = RendezvousRing(dict.fromkeys(nodes, 1.0)).assign(KEYS)
    assert first == again == shuffled == as_weights


def test_every_key_gets_an_owner_among_the_nodes() -> None:
    nodes = {"a", "b", "c"}
    owners = RendezvousRing(nodes).assign(KEYS)
    assert set(owners) == set(KEYS)
    assert set(owners.values()) == nodes


def test_single_node_owns_everything() -> None:
    ring = RendezvousRing(["only"])
    assert all(ring.owner(k) == "only" for k in KEYS[:500])


def test_empty_ring_owns_nothing() -> None:
    ring = RendezvousRing()
    assert ring.owner("k") is None
    assert ring.assign(KEYS[:10]) == {}
    assert ring.nodes == {}


def test_equal_weights_spread_keys_evenly() -> None:
    nodes = [f"n{i}" for i in range(5)]
    counts = Counter(RendezvousRing(nodes).assign(KEYS).values())
    expected = len(KEYS) / len(nodes)
    # Binomial sd is about 40 keys; allow 10%.
    for node in nodes:
        assert abs(counts[node] - expected) < 0.1 * expected, counts


def test_removing_a_node_moves_only_its_keys() -> None:
    nodes = [f"n{i}" for i in range(6)]
    before = RendezvousRing(nodes).assign(KEYS)
    after = RendezvousRing([n for n in nodes if n != "n3"]).assign(KEYS)
    for key in KEYS:
        if before[key] != "n3":
            assert after[key] == before[key], key
        else:
            assert after[key] != "n3"
    # Its keys spread over the survivors rather than landing on one.
    inherited = Counter(after[k] for k in KEYS if before[k] == "n3")
    assert len(inherited) == 5


@pytest.mark.parametrize("n", [1, 2, 4, 9])
def test_adding_a_node_moves_about_one_in_n_plus_one_keys_all_to_it(n: int) -> None:
    nodes = [f"n{i}" for i in range(n)]
    before = RendezvousRing(nodes).assign(KEYS)
    after = RendezvousRing([*nodes, "new"]).assign(KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "new" for k in moved)
    share = len(moved) / len(KEYS)
    expected = 1 / (n + 1)
    assert abs(share - expected) < 0.025, (share, expected)


def test_weights_give_proportional_shares() -> None:
    keys = [f"k{i}" for i in range(20_000)]
    counts = Counter(RendezvousRing({"big": 3.0, "small": 1.0}).assign(keys).values())
    # Expected 75%; the binomial sd is 0.3%, so 2% is very wide.
    assert abs(counts["big"] / len(keys) - 0.75) < 0.02, counts


def test_weights_over_several_nodes() -> None:
    weights = {"a": 1.0, "b": 2.0, "c": 5.0}
    keys = [f"k{i}" for i in range(20_000)]
    counts = Counter(RendezvousRing(weights).assign(keys).values())
    total = sum(weights.values())
    for node, weight in weights.items():
        assert abs(counts[node] / len(keys) - weight / total) < 0.02, counts


def test_changing_a_weight_moves_keys_only_towards_the_heavier_node() -> None:
    before = RendezvousRing({"a": 1.0, "b": 1.0, "c": 1.0}).assign(KEYS)
    after = RendezvousRing({"a": 1.0, "b": 2.0, "c": 1.0}).assign(KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved
    assert all(after[k] == "b" for k in moved)


@pytest.mark.parametrize("weight", [0, 0.0, -1.0, math.inf, math.nan])
def test_bad_weights_are_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        RendezvousRing({"a": 1.0, "b": weight})


def test_nodes_is_a_copy() -> None:
    ring = RendezvousRing({"a": 2.0})
    ring.nodes["b"] = 1.0
    assert ring.nodes == {"a": 2.0}


def test_bucket_of_is_stable_and_in_range() -> None:
    for buckets in (1, 2, 7, 64, 4096):
        for i in range(200):
            group = f"customer-{i}"
            b = bucket_of(group, buckets)
            assert 0 <= b < buckets
            assert bucket_of(group, buckets) == b
    assert bucket_of("anything", 1) == 0


def test_bucket_of_spreads_groups() -> None:
    counts = Counter(bucket_of(f"g{i}", 16) for i in range(16_000))
    assert set(counts) == set(range(16))
    assert all(700 < c < 1300 for c in counts.values()), counts


def test_hashes_are_the_same_in_another_process() -> None:
    """Every broker node must agree: no per-process salted hash."""
    groups = ["alpha", "beta", "gamma", "δέλτα", ""]
    script = (
        "from conveyor.core.ring import RendezvousRing, bucket_of, stable_hash\n"
        f"groups = {groups!r}\n"
        "ring = RendezvousRing({'a': 1.0, 'b': 2.0, 'c': 1.0})\n"
        "print([stable_hash(g) for g in groups])\n"
        "print([bucket_of(g, 64) for g in groups])\n"
        "print([ring.owner(g) for g in groups])\n"
    )
    env = {"PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(conveyor.__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    ring = RendezvousRing({"a": 1.0, "b": 2.0, "c": 1.0})
    assert out == [
        str([stable_hash(g) for g in groups]),
        str([bucket_of(g, 64) for g in groups]),
        str([ring.owner(g) for g in groups]),
    ]


def test_bucket_owners_covers_every_bucket() -> None:
    owners = bucket_owners({"s1": 1.0, "s2": 1.0, "s3": 2.0}, "orders", 64)
    assert set(owners) == set(range(64))
    assert set(owners.values()) <= {"s1", "s2", "s3"}
    assert bucket_owners({"s1": 1.0, "s2": 1.0, "s3": 2.0}, "orders", 64) == owners


def test_bucket_owners_without_sessions_is_empty() -> None:
    assert bucket_owners({}, "orders", 64) == {}


def test_bucket_owners_moves_only_buckets_of_the_departed_session() -> None:
    sessions = {f"s{i}": 1.0 for i in range(4)}
    before = bucket_owners(sessions, "q", 1024)
    del sessions["s2"]
    after = bucket_owners(sessions, "q", 1024)
    for bucket, owner in before.items():
        if owner != "s2":
            assert after[bucket] == owner


def test_bucket_owners_gives_a_joining_session_about_its_share() -> None:
    sessions = {f"s{i}": 1.0 for i in range(3)}
    before = bucket_owners(sessions, "q", 4096)
    after = bucket_owners({**sessions, "s3": 1.0}, "q", 4096)
    moved = [b for b in before if before[b] != after[b]]
    assert all(after[b] == "s3" for b in moved)
    assert abs(len(moved) / 4096 - 0.25) < 0.04


def test_bucket_owners_differ_between_queues() -> None:
    sessions = {"s1": 1.0, "s2": 1.0}
    assert bucket_owners(sessions, "q1", 64) != bucket_owners(sessions, "q2", 64)


def test_stable_hash_is_64_bit() -> None:
    values = [stable_hash(f"v{i}") for i in range(1000)]
    assert all(0 <= v < 1 << 64 for v in values)
    assert len(set(values)) == 1000
    assert max(values) > 1 << 62
