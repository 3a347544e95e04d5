"""ShortClaims: what the broker remembers of claims that came back short.

A session whose claim of a queue came back with fewer messages than it asked
for (and not for want of bytes) would find nothing by claiming again, until
the queue changes (its ``Waiters.version``), a delayed message comes due,
the session's buckets change, or the re-check interval passes. A long-poll
then waits at once instead of asking the store again.

Never on a shared store: other nodes' changes are heard of late (a NOTIFY),
and a receive must see what they committed.
"""

from __future__ import annotations

import msgspec

from conveyor.broker.waiters import Waiters
from conveyor.store.base import ClaimResult


class ShortClaim(msgspec.Struct):
    """A session's claim of a queue that came back short."""

    version: int  # the queue's change count just before the claim
    at: float  # the broker clock's time of the claim
    next_at: float | None  # when the queue's next delayed message comes due
    buckets: list[int]  # the buckets the session owned


class ShortClaims:
    def __init__(self, waiters: Waiters, recheck_interval: float, *, shared: bool) -> None:
        self._waiters = waiters
        self._recheck = recheck_interval
        self._shared = shared
        self._by_session: dict[str, dict[str, ShortClaim]] = {}

    def note(
        self,
        session: str,
        queue: str,
        limit: int,
        claimed: ClaimResult,
        emptied: bool,
        version: int,
        buckets: list[int],
        now: float,
    ) -> None:
        """Remember a claim that came back short (``emptied``: not for want
        of bytes); forget the last one otherwise."""
        if len(claimed.deliveries) < limit and emptied and not self._shared:
            self._by_session.setdefault(session, {})[queue] = ShortClaim(
                version, now, claimed.next_at, buckets
            )
        else:
            self._by_session.get(session, {}).pop(queue, None)

    def still(self, session: str, queue: str, buckets: list[int], now: float) -> ShortClaim | None:
        """The session's last short claim of the queue, if claiming again now
        would surely find nothing: the queue has not changed since, no delayed
        message came due, the session owns the same buckets, and it was less
        than the re-check interval ago."""
        short = self._by_session.get(session, {}).get(queue)
        if (
            short is None
            or short.version != self._waiters.version(queue)
            or not 0 <= now - short.at < self._recheck
            or (short.next_at is not None and now >= short.next_at)
            or short.buckets != buckets
        ):
            return None
        return short

    def forget(self, session: str) -> None:
        self._by_session.pop(session, None)
