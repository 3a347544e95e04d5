"""Deliveries pushed to a consumer under credit-based flow control.

A ``CreditedConsumer`` has a credit of ``prefetch`` deliveries. Its task
receives at most that many messages (long-polling while the queue is empty),
hands them to ``deliver`` and spends the credit; each delivery the consumer
settles (ack, nack or dead, whether or not the lease was still current)
gives one credit back. A consumer that stops settling stops receiving; while
``writable`` is clear (a client that does not read its socket) nothing is
received for it at all. So no more than ``prefetch`` deliveries are ever
outstanding or buffered for one consumer.

Each receive is bounded in bytes like any reply (broker/replies.py): at most
``max_reply_bytes``, or what ``budget`` has room for, so a prefetch of twenty
1 MiB messages goes out in two pushes, never one frame over the limit.

The native server pushes these deliveries over a socket; the in-process
client hands them to an async iterator. The consumer's task belongs to the
TaskSet it is given (the connection's subscriptions), else to one of its own;
``stop`` cancels it, and the owner's ``close`` waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from conveyor.broker.broker import Broker
from conveyor.broker.replies import ReplyBudget
from conveyor.core.errors import ConveyorError
from conveyor.core.tasks import TaskSet
from conveyor.core.types import Delivery

POLL_WAIT = 5.0  # seconds one long-poll waits before it is made again


class CreditedConsumer:
    def __init__(
        self,
        broker: Broker,
        session: str,
        queue: str,
        prefetch: int,
        deliver: Callable[[list[Delivery]], None],
        end: Callable[[ConveyorError], None],
        writable: asyncio.Event | None = None,
        budget: ReplyBudget | None = None,
        tasks: TaskSet | None = None,
    ) -> None:
        self.broker = broker
        self.session = session
        self.queue = queue
        self.credit = prefetch
        self.outstanding: set[str] = set()
        self._deliver = deliver
        self._end = end
        self._writable = writable
        self.budget = budget
        self._wake = asyncio.Event()
        self._tasks = tasks if tasks is not None else TaskSet(f"consumer of {queue}")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self._tasks.spawn(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def settled(self, message_id: str) -> bool:
        """A delivery of this consumer was settled: its credit comes back."""
        if message_id not in self.outstanding:
            return False
        self.outstanding.discard(message_id)
        self.credit += 1
        self._wake.set()
        return True

    async def _run(self) -> None:
        while True:
            if self.credit <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._writable is not None:
                await self._writable.wait()
            try:
                got = await self.broker.receive(
                    self.session,
                    self.queue,
                    max=min(self.credit, self.broker.config.max_receive),
                    wait=POLL_WAIT,
                    budget=self.budget,
                )
            except ConveyorError as exc:
                self._end(exc)
                return
            if got:
                self.credit -= len(got)
                self.outstanding.update(d.id for d in got)
                self._deliver(got)


def return_credit(consumers: dict[int, CreditedConsumer], settled_ids: list[str]) -> None:
    """Give the credit of each settled delivery back to its consumer."""
    for message_id in settled_ids:
        for consumer in consumers.values():
            if consumer.settled(message_id):
                break
