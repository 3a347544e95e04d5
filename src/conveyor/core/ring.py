"""Rendezvous (highest-random-weight) hashing with weights.

Each key goes to the node with the highest score ``-weight / ln(h)``, where
``h`` is a uniform hash of (node, key) in (0, 1). With equal weights this is
plain rendezvous hashing; with weights a node's share of the keys is
proportional to its weight. Removing a node moves only the keys it owned;
adding one moves only the keys it now wins, about 1/N of them.

Hashes are blake2b, so every process and every broker node computes the same
owners (Python's ``hash`` is salted per process).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

_SCALE = float(1 << 64)


def _uniform(node: str, key: str) -> float:
    digest = hashlib.blake2b(f"{node}\x00{key}".encode(), digest_size=8).digest()
    # (n + 0.5) / 2**64 lies strictly inside (0, 1): ln() is finite and negative.
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


def stable_hash(value: str) -> int:
    """A 64-bit hash that is the same in every process."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


def bucket_of(group: str, buckets: int) -> int:
    """The bucket a message group hashes into."""
    return stable_hash(group) % buckets


class RendezvousRing:
    """Owners of keys over a weighted set of nodes."""

    def __init__(self, nodes: Mapping[str, float] | Iterable[str] = ()) -> None:
        weights = dict(nodes) if isinstance(nodes, Mapping) else dict.fromkeys(nodes, 1.0)
        for node, weight in weights.items():
            if not weight > 0 or math.isinf(weight):
                raise ValueError(f"weight of {node!r} must be a positive finite number")
        self._weights = weights

    @property
    def nodes(self) -> dict[str, float]:
        return dict(self._weights)

    def owner(self, key: str) -> str | None:
        best: str | None = None
        best_score = -math.inf
        for node in sorted(self._weights):
            score = -self._weights[node] / math.log(_uniform(node, key))
            if score > best_score:
                best, best_score = node, score
        return best

    def assign(self, keys: Iterable[str]) -> dict[str, str]:
        """Owner of every key; empty when the ring has no nodes."""
        if not self._weights:
            return {}
        return {key: owner for key in keys if (owner := self.owner(key)) is not None}


def bucket_owners(sessions: Mapping[str, float], queue: str, buckets: int) -> dict[int, str]:
    """The session that should own each bucket of a queue."""
    ring = RendezvousRing(sessions)
    if not sessions:
        return {}
    owners: dict[int, str] = {}
    for bucket in range(buckets):
        owner = ring.owner(f"{queue}/{bucket}")
        if owner is not None:
            owners[bucket] = owner
    return owners
