"""Byte budgets of the native server: how many bytes the clients can make it
hold, per connection and in total.

Two pools with the same limits, one per direction:
  - requests: the bytes of requests read and not finished yet; a frame's
    bytes are reserved as soon as its length prefix arrives, before its body
    is buffered;
  - replies: the bytes reserved for replies being built (just before the
    store is read for the messages of a receive, a push, a dead-letter page
    or a result; before a list or a batch runs) and those of replies written
    but not yet taken by the client's socket.
A pool gives one connection at most ``per_connection`` bytes and all of them
together at most ``total``. The last quarter of the total is kept for
connections holding less than ``FLOOR``: clients with large backlogs cannot
stop everybody's small requests. A connection that finds no room stops
reading (requests) or waits to build its reply (replies) until some is
freed. The pools are apart so that a request holding its frame while it
waits for room for its reply never waits on another request's frame: each
pool is freed without needing the other, replies by the client reading.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from conveyor.core.errors import InvalidArgument

FLOOR = 4 * 1024 * 1024


class Pool:
    """One direction's bytes across every connection."""

    def __init__(self, total: int, per_connection: int) -> None:
        self.total = total
        self.per_connection = per_connection
        self.kept = total // 4  # for connections under the floor
        self.used = 0
        # Shares that found no room, to be told when some is freed.
        self.blocked: dict[Share, None] = {}
        # Called before a share is refused for want of room in the total:
        # lets the server count what has drained since it last looked.
        self.refresh: Callable[[], None] | None = None

    def share(self, on_room: Callable[[], None]) -> Share:
        return Share(self, on_room)

    def _freed(self) -> None:
        if self.blocked:
            blocked = list(self.blocked)
            self.blocked.clear()
            for share in blocked:
                share.wake()


class Share:
    """One connection's bytes of a pool. Its requests that wait for room are
    served in turn, by whoever frees some: the first waiting is given its
    bytes as soon as they fit, then the next (a connection with hundreds of
    requests waiting costs a release nothing more than the grants it makes)."""

    __slots__ = ("_granting", "_on_room", "_waiters", "closed", "held", "pool")

    def __init__(self, pool: Pool, on_room: Callable[[], None]) -> None:
        self.pool = pool
        self.held = 0
        self.closed = False
        self._on_room = on_room
        # Requests waiting in turn: the future of each gets the bytes granted.
        self._waiters: deque[tuple[asyncio.Future[int], int, int]] = deque()
        self._granting = False

    def room(self) -> int:
        pool = self.pool
        shared = pool.total - pool.kept - pool.used
        if self.held < FLOOR:
            shared = max(shared, min(FLOOR - self.held, pool.total - pool.used))
        return min(pool.per_connection - self.held, shared)

    def has_room(self) -> bool:
        """Whether one more byte fits; if not, the share hears when one does."""
        return self._fits(1) >= 1

    def _fits(self, at_least: int) -> int:
        room = self.room()
        if room < at_least and self.pool.refresh is not None:
            self.pool.refresh()
            room = self.room()
        if room < at_least <= self.pool.per_connection - self.held:
            # Short of the total, not of its own limit: to be told when
            # another connection frees some (its own releases tell it anyway).
            self.pool.blocked[self] = None
        return room

    def try_take(self, want: int, at_least: int) -> int:
        """Reserve between ``at_least`` and ``want`` bytes, as many as fit;
        0 if not even ``at_least`` does (the share is woken when room frees)."""
        room = self._fits(at_least)
        if room < at_least:
            return 0
        taken = min(want, room)
        self.force(taken)
        return taken

    async def take(self, want: int, at_least: int) -> int:
        """``try_take``, waiting in turn until ``at_least`` fits."""
        if not self._waiters and (taken := self.try_take(want, at_least)):
            return taken
        granted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append((granted, want, at_least))
        try:
            return await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(granted.result())  # granted, but nobody will use it
            raise

    def force(self, n: int) -> None:
        """Count bytes that are here already, whether or not they fit."""
        if not self.closed:
            self.held += n
            self.pool.used += n

    def release(self, n: int) -> None:
        if n <= 0 or self.closed:
            return
        n = min(n, self.held)
        self.held -= n
        self.pool.used -= n
        self.wake()
        self.pool._freed()

    def wake(self) -> None:
        """Room may have come: grant the waiting requests what fits, in turn."""
        if self._waiters and not self._granting:
            self._granting = True  # a release made while granting is seen by this loop
            try:
                while self._waiters:
                    granted, want, at_least = self._waiters[0]
                    if granted.done():  # its request was cancelled
                        self._waiters.popleft()
                        continue
                    taken = self.try_take(want, at_least)
                    if not taken:
                        break
                    self._waiters.popleft()
                    granted.set_result(taken)
            finally:
                self._granting = False
        if not self.closed:
            self._on_room()

    def close(self) -> None:
        """The connection is gone: everything it held is free."""
        self.release(self.held)
        self.closed = True
        self.pool.blocked.pop(self, None)
        while self._waiters:
            self._waiters.popleft()[0].cancel()


class Replies:
    """The reply bytes of one request or subscription (a ``ReplyBudget``):
    what it reserved and has not handed over to the connection yet."""

    __slots__ = ("held", "share")

    def __init__(self, share: Share) -> None:
        self.share = share
        self.held = 0

    async def reserve(self, want: int, at_least: int) -> int:
        if want <= 0:
            return 0
        taken = await self.share.take(want, min(at_least, want))
        self.held += taken
        return taken

    def keep(self, reserved: int, used: int) -> None:
        if used > reserved:
            self.share.force(used - reserved)
        else:
            self.share.release(reserved - used)
        self.held += used - reserved

    def hand_over(self) -> int:
        """The bytes held, now the connection's to release once sent."""
        held, self.held = self.held, 0
        return held


def check_limits(
    largest_reply: int,
    max_frame: int,
    max_connections: int,
    handshake_timeout: float,
    max_connection_bytes: int,
    max_total_bytes: int,
) -> None:
    """InvalidArgument unless the native server's limits fit together:
    ``largest_reply`` is a reply of max_reply_bytes with its frame's envelope."""
    if largest_reply > max_frame:
        raise InvalidArgument(
            f"the frame limit ({max_frame}) must hold the largest reply ({largest_reply} bytes)"
        )
    if max_connection_bytes < max_frame:
        raise InvalidArgument(
            f"a connection's byte limit ({max_connection_bytes}) must hold a whole frame"
            f" ({max_frame} bytes)"
        )
    if max_total_bytes < 2 * max_connection_bytes:
        raise InvalidArgument(
            f"the total byte limit ({max_total_bytes}) must be at least twice a"
            f" connection's ({max_connection_bytes})"
        )
    if max_connections < 1:
        raise InvalidArgument("max_connections must be at least 1")
    if not handshake_timeout > 0:
        raise InvalidArgument("handshake_timeout must be a positive number of seconds")
