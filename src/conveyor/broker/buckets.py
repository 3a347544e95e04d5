"""Which group buckets of a queue each consumer session should own.

The owners come from rendezvous hashing over the queue's live consumer
sessions, weighted by capacity. The answer is cached per queue and dropped
whenever this broker sees the consumers change; it also ages out after
``max_age`` seconds, so sessions opened on other broker nodes (a shared
store) are seen too. The store, not this cache, enforces that a bucket moves
only once its previous owner holds no lease in it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from conveyor.core.ring import bucket_owners


class BucketAssigner:
    def __init__(
        self,
        consumers: Callable[[str], Awaitable[dict[str, int]]],
        *,
        max_age: float = 1.0,
    ) -> None:
        self._consumers = consumers
        self._max_age = max_age
        self._cache: dict[str, tuple[float, int, dict[str, list[int]]]] = {}

    def invalidate(self, queue: str | None = None) -> None:
        if queue is None:
            self._cache.clear()
        else:
            self._cache.pop(queue, None)

    async def buckets_of(self, queue: str, session: str, buckets: int) -> list[int]:
        cached = self._cache.get(queue)
        now = time.monotonic()
        if cached is None or cached[1] != buckets or now - cached[0] > self._max_age:
            sessions = await self._consumers(queue)
            owners = bucket_owners({s: float(c) for s, c in sessions.items()}, queue, buckets)
            by_session: dict[str, list[int]] = {}
            for bucket, owner in owners.items():
                by_session.setdefault(owner, []).append(bucket)
            cached = (now, buckets, by_session)
            self._cache[queue] = cached
        return cached[2].get(session, [])
