"""The worker runtime: receive task messages, run them, settle their leases.

Flow control: the worker consumes with a prefetch (split between its
queues) equal to its concurrency by default, so the broker never sends it
more messages than it can start at once; each settled message makes room for
the next. A larger ``prefetch`` keeps that many more in a local backlog, each
started as soon as one running task ends: no wait for the broker between two
short tasks, at the price of messages held here while another worker may be
idle. A backlogged message's lease counts from its delivery: it is renewed
as soon as it starts if a third of it has gone, and one that waited its whole
lease is given back unrun (``release``: not an attempt; the broker may already
have given it to another worker).

Leases: while a task runs, a keeper (leases.py) renews its lease every third
of the lease length. The keeper also tracks the lease deadline by this process's
own clock. If the lease could not be renewed before that deadline (the
broker says LeaseLost, or cannot be reached in time, or this process was
frozen), the task is told so (``current_task().lease_lost``), the process
pool stops it, and its outcome is discarded: the broker has given, or will
give, the message to another worker, and only one of them may commit.

The broker: a worker started where no broker answers says so (a WARNING
naming the address and what to check) and keeps trying, with capped
backoff, until one answers or a signal stops it. Once connected, its client
reconnects by itself whenever the connection is lost (conveyor.client.native):
a broker restarted, or a node of a cluster gone, is found again within
seconds, and the subscriptions opened again.

Shutdown: the first SIGTERM/SIGINT stops taking work, gives prefetched
messages that have not started (the backlog) back at once, and waits up to ``grace``
seconds for running tasks; a second signal exits at once (the broker
releases the leases when the connection drops).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable

from conveyor.client.aio import AsyncClient, Delivery
from conveyor.client.connecting import RECONNECT, ConnectionLost
from conveyor.core import eventloop
from conveyor.core.errors import ConveyorError, InvalidArgument, LeaseLost, QueueNotFound
from conveyor.core.tasks import TaskSet
from conveyor.worker.app import TASK_HEADER, App, Task
from conveyor.worker.context import TaskContext
from conveyor.worker.leases import LeaseKeeper
from conveyor.worker.middleware.base import Execution
from conveyor.worker.pools import Pool, make_pool

log = logging.getLogger("conveyor.worker")
MAX_REASON = 32 * 1024  # characters of a traceback kept with a nack or dead letter


def load_app(path: str) -> App:
    """``module:attribute``, or ``module`` alone for its attribute ``app``;
    the module imported from the current directory or ``sys.path``.
    InvalidArgument, saying what to pass instead, for anything else."""
    module_name, _, attribute = path.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise InvalidArgument(f"{path!r}: name the app's module, e.g. tasks:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise  # the app's module itself imports something missing: its traceback tells
        raise InvalidArgument(
            f"{path}: no module named {module_name!r} here ({os.getcwd()}) or on PYTHONPATH"
        ) from None
    found = getattr(module, attribute, None)
    if isinstance(found, App):
        return found
    apps = [name for name, value in vars(module).items() if isinstance(value, App)]
    if isinstance(found, Task):
        owner = [name for name in apps if getattr(module, name) is found.app]
        instead = f"{module_name}:{owner[0]}" if owner else "module:attribute of its App"
        raise InvalidArgument(
            f"{module_name}:{attribute} is a task, not an app: a worker runs every task of an"
            f" app; pass the app: conveyor worker {instead}"
        )
    problem = (
        f"{module_name} has no attribute {attribute!r}"
        if found is None
        else f"{module_name}:{attribute} is a {type(found).__name__}, not a conveyor.App"
    )
    apps_there = ", ".join(f"{module_name}:{name}" for name in apps) or "none"
    raise InvalidArgument(f"{path}: {problem} (the apps of {module_name}: {apps_there})")


def check_layout(concurrency: int, prefetch: int | None) -> None:
    """ValueError for a concurrency or prefetch a worker cannot run with."""
    if concurrency < 1:
        raise ValueError("--concurrency is at least 1")
    if prefetch is not None and prefetch < concurrency:
        raise ValueError(f"--prefetch is at least the concurrency ({concurrency})")


class Worker:
    def __init__(
        self,
        app: App,
        *,
        queues: list[str] | None = None,
        concurrency: int = 4,
        prefetch: int | None = None,
        pool: str = "threads",
        grace: float = 30.0,
        app_path: str | None = None,
        name: str | None = None,
    ) -> None:
        check_layout(concurrency, prefetch)
        self.app = app
        self.queues = queues or app.queues() or ["default"]
        self.concurrency = concurrency
        self.prefetch = concurrency if prefetch is None else prefetch
        self.pool: Pool = make_pool(pool, concurrency, app_path)
        self.grace = grace
        self.name = name or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.client: AsyncClient | None = None
        self.running: dict[str, Execution] = {}
        self.completed = 0
        self._stopping = asyncio.Event()
        self._signals = 0
        # Every task the worker starts is one of these, cancelled at the end
        # of ``run`` if it still runs: the deliveries running, and those
        # given back from the backlog.
        self._tasks = TaskSet("worker tasks")
        self._giving_back = TaskSet("worker give-backs")
        # Deliveries waiting for a free slot, with the monotonic time each came.
        self._backlog: collections.deque[tuple[Delivery, float]] = collections.deque()
        # The slots taken: deliveries (id, token) started and not yet run.
        self._running: set[tuple[str, int]] = set()

    # -- life cycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking work; running tasks finish within the grace period."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: stopping (signal %d); again to exit at once", self.name, sig)
            self.stop()
        else:
            log.warning("%s: second signal, exiting now", self.name)
            os._exit(1)

    async def run(self) -> None:
        client = self.client = AsyncClient(self.app.url, name=self.name)
        try:
            if not await self._reach_broker(client):
                return  # stopped before a broker answered
        except BaseException:
            await client.close()
            raise
        await self.pool.start()
        consumers = TaskSet("worker consumers")
        try:
            share, extra = divmod(self.prefetch, len(self.queues))
            for i, queue in enumerate(self.queues):
                consumers.spawn(self._consume(client, queue, max(1, share + (i < extra))))
            log.info(
                "%s: consuming %s, concurrency %d",
                self.name,
                ",".join(self.queues),
                self.concurrency,
            )
            await self._stopping.wait()
            await consumers.close()
            backlog = [delivery for delivery, _ in self._backlog]
            self._backlog.clear()
            await asyncio.gather(*(self._give_back(d) for d in backlog))
            await self._drain()
        finally:
            self.stop()  # if it ends otherwise (cancelled): nothing new starts
            await consumers.close()
            await self.pool.close()
            await client.close()
            # Past the grace period: what still runs is given up on (the
            # broker releases its leases with the connection's session).
            await self._tasks.close()
            await self._giving_back.close()
            log.info("%s: stopped after %d tasks", self.name, self.completed)

    async def _reach_broker(self, client: AsyncClient) -> bool:
        """Connect and declare the queues, trying again (with capped backoff)
        for as long as no broker answers: a worker outlives its broker. Once
        connected, the client reconnects by itself. False if stopped first."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                await client.connect()
                for queue in self.queues:
                    await client.create_queue(queue)
            except ConnectionLost as exc:  # BrokerUnreachable included
                attempt += 1
                wait = RECONNECT.backoff(attempt)
                if attempt == 1:
                    log.warning("%s: %s (trying again until it answers)", self.name, exc.message)
                else:
                    log.info("%s: still no broker; next attempt in %.1fs", self.name, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)
                continue
            if attempt:
                log.info("%s: the broker answered", self.name)
            return True
        return False

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info(
            "%s: waiting up to %gs for %d running tasks", self.name, self.grace, len(self._tasks)
        )
        try:
            await asyncio.wait_for(self._tasks.wait(), self.grace)
        except TimeoutError:
            log.warning(
                "%s: %d tasks still running after the grace period", self.name, len(self._tasks)
            )

    async def _consume(self, client: AsyncClient, queue: str, prefetch: int) -> None:
        while not self._stopping.is_set():
            try:
                async for delivery in client.consume(queue, prefetch=prefetch):
                    if self._stopping.is_set():
                        await self._give_back(delivery)
                        continue
                    if len(self._running) < self.concurrency:
                        self._start(delivery, time.monotonic())
                    else:
                        self._backlog.append((delivery, time.monotonic()))
            except asyncio.CancelledError:
                raise
            except QueueNotFound:  # deleted, or a broker restarted without its data
                log.warning("%s: queue %s is gone; declaring it again", self.name, queue)
                with contextlib.suppress(ConveyorError):
                    await client.create_queue(queue)
                await asyncio.sleep(1.0)
            except ConveyorError as exc:
                log.warning("%s: consuming %s failed (%s); again in 1s", self.name, queue, exc)
                await asyncio.sleep(1.0)

    def _start(self, delivery: Delivery, received: float) -> None:
        """Run the delivery in a slot. The slot frees as soon as the task ran
        (``_ran``), before its outcome is settled: the next waiting message
        starts with no round trip to the broker in between."""
        slot = (delivery.id, delivery.token)
        self._running.add(slot)
        task = self._tasks.spawn(self._handle(delivery, received))
        task.add_done_callback(functools.partial(self._ended, slot))

    def _ended(self, slot: tuple[str, int], task: asyncio.Task[None]) -> None:
        self._ran(slot)  # if the task ended before it said so itself

    def _ran(self, slot: tuple[str, int]) -> None:
        if slot in self._running:
            self._running.discard(slot)
            self._start_waiting()

    def _start_waiting(self) -> None:
        while (
            self._backlog and len(self._running) < self.concurrency and not self._stopping.is_set()
        ):
            delivery, received = self._backlog.popleft()
            if time.monotonic() < received + delivery.lease:
                self._start(delivery, received)
                continue
            log.warning("%s: lease of %s ran out in the backlog", self.name, delivery.id)
            # Settling it, even too late, gives its credit back.
            self._giving_back.spawn(self._give_back(delivery))

    async def _give_back(self, delivery: Delivery) -> None:
        """A delivery this worker will not run goes back unrun: not an attempt."""
        with contextlib.suppress(ConveyorError):
            await delivery.release()

    # -- one task -------------------------------------------------------------------

    async def _handle(self, delivery: Delivery, received: float) -> None:
        """Run one delivery and settle it, freeing its slot before the settle."""
        slot = (delivery.id, delivery.token)
        name = delivery.headers.get(TASK_HEADER, "")
        task = self.app.tasks.get(name)
        if task is None:
            self._ran(slot)
            await self._settle_quietly(
                delivery.dead(f"no task named {name!r} on worker {self.name}")
            )
            return
        try:
            payload = self.app.serializer.loads(delivery.body)
            args, kwargs = list(payload.get("args", [])), dict(payload.get("kwargs", {}))
        except Exception as exc:
            self._ran(slot)
            await self._settle_quietly(delivery.dead(f"undecodable task arguments: {exc!r}"))
            return
        ctx = TaskContext(
            id=delivery.id,
            name=name,
            queue=delivery.queue,
            attempt=delivery.attempts,
            max_attempts=delivery.max_attempts,
            token=delivery.token,
        )
        execution = Execution(task=task, ctx=ctx, args=args, kwargs=kwargs)
        execution.extra["lease_deadline"] = received + delivery.lease
        keeper = LeaseKeeper(delivery, execution, received, self.pool.lease_lost)
        self.running[delivery.id] = execution
        try:
            for middleware in self.app.middleware:
                self.app.hook(middleware.before_execute, execution)
            await self.pool.run(execution)
            if execution.error is not None:
                execution.action = "dead"
                execution.reason = execution.traceback or repr(execution.error)
            for middleware in self.app.middleware:
                self.app.hook(middleware.after_execute, execution)
            if ctx.lease_lost or time.monotonic() > execution.extra["lease_deadline"]:
                ctx.mark_lease_lost()
                execution.action = "discard"
            self._ran(slot)
            await self._settle(delivery, execution)
        finally:
            keeper.cancel()
            self.running.pop(delivery.id, None)
            self.completed += 1

    async def _settle(self, delivery: Delivery, execution: Execution) -> None:
        action = execution.action
        reason = execution.reason[-MAX_REASON:]
        if action == "discard":
            log.warning("%s: lease of %s lost: outcome discarded", self.name, delivery.id)
            return
        if action == "ack":
            outcome = delivery.ack(execution.result)
        elif action == "nack":
            outcome = delivery.nack(delay=execution.delay, error=reason)
        else:
            outcome = delivery.dead(reason or "failed")
        await self._settle_quietly(outcome)

    async def _settle_quietly(self, outcome: Awaitable[None]) -> None:
        try:
            await outcome
        except LeaseLost as exc:
            log.warning("%s: settling refused: %s", self.name, exc)
        except ConveyorError as exc:
            log.error("%s: settling failed: %s", self.name, exc)


def run_worker(
    app_path: str,
    *,
    queues: list[str] | None,
    concurrency: int,
    pool: str,
    grace: float,
    url: str | None = None,
    prefetch: int | None = None,
) -> None:
    app = load_app(app_path)
    if url is not None:
        app.url = url

    async def main() -> None:
        worker = Worker(
            app,
            queues=queues,
            concurrency=concurrency,
            prefetch=prefetch,
            pool=pool,
            grace=grace,
            app_path=app_path,
        )
        worker.install_signal_handlers()
        await worker.run()

    eventloop.run(main())
