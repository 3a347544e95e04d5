"""A worker that subscribes to a queue which already holds work must get it.

The broker answers ``consume`` and, with a backlog, pushes the first
deliveries right behind the reply. Whatever the timing, the consumer must see
them: a delivery that is leased to a session but never reaches its worker
stays leased, and its credit never comes back, so the worker stalls.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from pathlib import Path

import pytest
from worker_harness import (
    BrokerProcess,
    StartWorker,
    TasksModule,
    ids_with,
    read_events,
    wait_until,
)

import conveyor


def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)


async def test_consume_sees_a_delivery_pushed_right_behind_its_reply(
    broker: BrokerProcess,
) -> None:
    async with conveyor.AsyncClient(broker.url, name="backlog-consumer") as client:
        await client.create_queue("backlog")
        await client.enqueue("backlog", "waiting")
        deliveries = client.consume("backlog", prefetch=1)
        first = asyncio.ensure_future(anext(deliveries))
        # Hold the loop once the consume request is written, so the reply and
        # the pushed delivery are read in one chunk (as on a busy worker).
        asyncio.get_running_loop().call_soon(block_the_loop, 0.3)
        try:
            delivery = await asyncio.wait_for(asyncio.shield(first), 5)
        except TimeoutError:
            stats = await client.stats("backlog")
            pytest.fail(
                "the delivery pushed with the consume reply never reached the consumer; "
                f"the broker holds it leased to the session: {stats}"
            )
        finally:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await deliveries.aclose()
        assert delivery.text() == "waiting"
        await delivery.ack()


TASKS = """
app = conveyor.App(os.environ["CONVEYOR_URL"])


@app.task(queue="work")
def add(a, b):
    record("done")
    return a + b
"""


def ran_all(directory: Path, ids: set[str]) -> bool:
    return set(ids_with(read_events(directory), "done")) >= ids


@pytest.mark.slow
def test_workers_started_on_a_backlog_start_working(
    tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    """The same, end to end: worker after worker starts on a waiting backlog.
    The race is timing-dependent, hence several rounds, and the process pool,
    whose children's start-up keeps the worker's loop from reading the
    consume reply before the first push arrives."""
    tasks = tasks_module(TASKS)
    for round_ in range(8):
        handles = tasks.add.delay_many([(round_, i) for i in range(3)])
        worker = start_worker(["work"], concurrency=2, pool="processes", wait=False)
        ids = {h.id for h in handles}
        wait_until(
            functools.partial(ran_all, tmp_path, ids),
            10,
            f"worker {round_} to run the backlog it started on",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0
