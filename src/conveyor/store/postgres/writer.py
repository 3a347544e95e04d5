"""SetwiseRoundWriter: the batched operations (enqueue, ack, nack, extend,
dead) of every caller on this node, gathered into one transaction per round.

The group commit of the PostgreSQL store. What differs from SQLite's
(store/sqlite/writer.py, SavepointBatchWriter): a round hands all its
operations at once to one round function, which settles each kind of them
set-wise (one statement for all the round's acks...), on one of a few
lanes so that rounds overlap; SQLite runs each operation alone in a
savepoint, one after the other.

Callers submit an operation and wait. While a round is in the database, the
next ones queue up; a free lane then takes every operation waiting at that
moment and hands them to the round function, which runs them as a few
set-based statements (all acks of the round in one DELETE, and so on) in one
transaction on the lane's own connection. Each caller's future is resolved
only after the commit returned, so a reply to a producer always follows
durability. A node has a few lanes (2 by default), so that one round is
being built while another waits for its commit; rounds of several lanes and
nodes run side by side as any concurrent transactions do (see messages.py
for what keeps them apart), and PostgreSQL groups their WAL flushes.

The round function records one outcome per job: a value, or a ConveyorError
(QueueFull, QueueNotFound...) decided before that job wrote anything, so its
neighbours still commit. A round that hits a deadlock or a key another node
took meanwhile is rolled back and run again whole. Any other database error
fails the round; if it held several jobs, each is then run again in a round
of its own, so one bad job fails alone. A lost connection fails the round's
jobs with StoreError (whether the commit happened is unknown; a producer
retries with an idempotency key).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from conveyor.core.errors import BrokerClosed, ConveyorError
from conveyor.store.base import CommitMeter
from conveyor.store.postgres import driver

log = logging.getLogger("conveyor.store.postgres")


class Job:
    __slots__ = ("future", "kind", "op", "result")

    def __init__(self, kind: str, op: Any, future: asyncio.Future[Any]) -> None:
        self.kind = kind
        self.op = op
        self.future = future
        # (True, value) or (False, exception), set by the round function.
        self.result: tuple[bool, Any] = (False, None)

    def succeed(self, value: Any) -> None:
        self.result = (True, value)

    def fail(self, exc: BaseException) -> None:
        self.result = (False, exc)


RoundFunction = Callable[[driver.Connection, list[Job]], Awaitable[None]]
LaneConnection = Callable[[int], AbstractAsyncContextManager[driver.Connection]]


class SetwiseRoundWriter:
    def __init__(
        self,
        connection: LaneConnection,
        run_round: RoundFunction,
        *,
        lanes: int = 2,
        max_batch: int = 1024,
    ) -> None:
        self._connection = connection
        self._run_round = run_round
        self._lanes = lanes
        self._max_batch = max_batch
        self._pending: list[Job] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # Measured for operations people and /metrics.
        self.meter = CommitMeter()  # whole rounds, from their first statement
        self.retries = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._lane(lane), name=f"conveyor-postgres-writer-{lane}")
            for lane in range(self._lanes)
        ]

    async def submit(self, kind: str, op: Any) -> Any:
        """Run ``op`` in the next round; its outcome once committed."""
        if self._closed:
            raise BrokerClosed("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(Job(kind, op, future))
        self._wakeup.set()
        return await future

    async def stop(self) -> None:
        """Finish every submitted operation, then stop."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks)

    async def _lane(self, lane: int) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._commit(lane, batch)

    async def _commit(self, lane: int, batch: list[Job]) -> None:
        started = time.perf_counter()
        error = await self._attempt(lane, batch)
        if error is not None and len(batch) > 1 and not driver.is_connection_error(error):
            # One job may be at fault: give each a round of its own.
            log.warning("a round of %d operations failed (%s); each runs alone", len(batch), error)
            for job in batch:
                await self._commit(lane, [job])
            return
        if error is None:
            self.meter.record(len(batch), time.perf_counter() - started)
        else:
            failure = _failure(error)
            for job in batch:
                job.fail(failure)
        for job in batch:
            _resolve(job)

    async def _attempt(self, lane: int, batch: list[Job]) -> BaseException | None:
        """Run the round, again after transient errors; the error that ended it."""
        for attempt in range(1, driver.TRANSIENT_RUNS + 1):
            for job in batch:
                job.result = (False, None)
            try:
                async with self._connection(lane) as conn:
                    await self._run_round(conn, batch)
            except Exception as exc:
                if driver.is_transient(exc) and attempt < driver.TRANSIENT_RUNS:
                    self.retries += 1
                    await asyncio.sleep(driver.TRANSIENT_BACKOFF.backoff(attempt))
                    continue
                return exc
            return None
        raise AssertionError("unreachable")


def _failure(error: BaseException) -> BaseException:
    failure = driver.translate(error)
    if not isinstance(failure, ConveyorError):
        log.error("store round failed", exc_info=error)
    return failure  # a bug is reported to the caller as it is


def _resolve(job: Job) -> None:
    if job.future.done():  # the caller gave up waiting
        return
    ok, value = job.result
    if ok:
        job.future.set_result(value)
    elif value is None:
        job.future.set_exception(RuntimeError(f"the round left {job.kind} without an outcome"))
    else:
        job.future.set_exception(value)
