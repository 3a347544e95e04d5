"""Consumers waiting in a long-poll receive, woken when a queue changes.

A consumer registers *before* it tries to claim and waits only if the claim
came back empty, so a change committed between the two still wakes it.

Each queue also counts its changes (``version``): a consumer whose last claim
came back short and whose queue has not changed since knows that claiming
again would find nothing, and waits at once (claims.py).

Producers waiting for a message's result (``ResultWaiters``) are woken when
the message is settled on this broker; on a shared store they poll as well.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


class Waiters:
    """Each waiter is a bare future, set when it is woken: cheaper to wait on
    with a timeout than an Event under ``asyncio.wait_for`` (no task each)."""

    def __init__(self) -> None:
        self._by_queue: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._versions: dict[str, int] = {}

    def register(self, queue: str) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_queue.setdefault(queue, collections.deque()).append(waiter)
        return waiter

    def unregister(self, queue: str, waiter: asyncio.Future[None]) -> None:
        waiting = self._by_queue.get(queue)
        if waiting is None:
            return
        with contextlib.suppress(ValueError):
            waiting.remove(waiter)
        if not waiting:
            del self._by_queue[queue]

    def notify(self, queue: str, count: int | None = None) -> None:
        """Wake ``count`` waiters of the queue, oldest first, or all of them."""
        self._versions[queue] = self._versions.get(queue, 0) + 1
        waiting = self._by_queue.get(queue)
        if not waiting:
            return
        woken = 0
        for waiter in waiting:
            if count is not None and woken >= count:
                break
            if not waiter.done():
                waiter.set_result(None)
                woken += 1

    def notify_all(self) -> None:
        for queue in self._by_queue.keys() | self._versions.keys():
            self.notify(queue)

    def version(self, queue: str) -> int:
        """How many times the queue changed (was notified) so far."""
        return self._versions.get(queue, 0)


async def wait(waiter: asyncio.Future[None], timeout: float) -> None:
    """Until the waiter is woken or ``timeout`` seconds passed."""
    timer = asyncio.get_running_loop().call_later(timeout, _time_up, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ResultWaiters:
    """Producers waiting for the results of messages, by message id."""

    def __init__(self) -> None:
        self._by_message: dict[str, list[asyncio.Future[None]]] = {}

    async def wait(self, message_id: str, timeout: float) -> None:
        """Until the message is settled here (``wake``), or ``timeout`` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_message.setdefault(message_id, []).append(future)
        try:
            await wait(future, timeout)
        finally:
            waiting = self._by_message.get(message_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._by_message.pop(message_id, None)

    def wake(self, message_id: str) -> None:
        for future in self._by_message.get(message_id, ()):
            if not future.done():
                future.set_result(None)
