"""TaskSet (core/tasks.py): the owner of background tasks keeps them, logs a
failure once, and on close cancels and waits for every one of them."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging

import pytest

from conveyor.core.tasks import TaskSet


async def test_a_task_is_kept_until_it_ends_and_returns_its_value() -> None:
    tasks = TaskSet("test")
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 7

    task = tasks.spawn(work())
    await asyncio.sleep(0)
    assert len(tasks) == 1
    release.set()
    assert await task == 7
    assert len(tasks) == 0


async def test_a_failing_task_is_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSet("conn 1.2.3.4")

    async def broken() -> None:
        raise ValueError("no dough")

    with caplog.at_level(logging.DEBUG):
        task = tasks.spawn(broken(), name="request 9")
        await asyncio.wait([task])
        await asyncio.sleep(0)  # the done callbacks run
        del task
        gc.collect()  # asyncio would log an unretrieved exception here
        await asyncio.sleep(0)
    failures = [r for r in caplog.records if "no dough" in str(r.exc_info)]
    assert len(failures) == 1
    assert failures[0].name == "conveyor.tasks"
    assert failures[0].levelno == logging.ERROR
    assert failures[0].getMessage() == "task request 9 of conn 1.2.3.4 failed"
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(tasks) == 0


async def test_a_cancelled_task_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("test")
    task = tasks.spawn(asyncio.sleep(3600))
    await asyncio.sleep(0)
    with caplog.at_level(logging.DEBUG):
        tasks.cancel()
        await asyncio.wait([task])
        await asyncio.sleep(0)
    assert task.cancelled()
    assert caplog.records == []
    assert len(tasks) == 0
    # cancel() leaves the set open
    assert await tasks.spawn(asyncio.sleep(0, result="again")) == "again"


async def test_close_cancels_every_task_and_waits_for_them_to_end() -> None:
    tasks = TaskSet("test")
    cleaned: list[int] = []

    async def holds(n: int) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            cleaned.append(n)

    for n in range(3):
        tasks.spawn(holds(n))
    await asyncio.sleep(0)
    await tasks.close()
    assert sorted(cleaned) == [0, 1, 2]
    assert len(tasks) == 0
    assert tasks.closed


async def test_a_closed_set_refuses_new_tasks_and_closes_their_coroutine() -> None:
    tasks = TaskSet("test")
    await tasks.close()
    coro = asyncio.sleep(1)
    with pytest.raises(RuntimeError, match="closed"):
        tasks.spawn(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


async def test_close_from_one_of_its_own_tasks_waits_for_the_others() -> None:
    tasks = TaskSet("test")
    other = tasks.spawn(asyncio.sleep(3600))

    async def closer() -> str:
        await tasks.close()
        return "closed"

    assert await tasks.spawn(closer()) == "closed"
    assert other.cancelled()


async def test_on_done_sees_each_task_after_it_left_the_set() -> None:
    seen: list[tuple[str, int]] = []
    tasks = TaskSet("test", on_done=lambda t: seen.append((t.get_name(), len(tasks))))
    first = tasks.spawn(asyncio.sleep(0), name="first")
    second = tasks.spawn(asyncio.sleep(3600), name="second")
    await first
    await asyncio.sleep(0)
    assert seen == [("first", 1)]
    await tasks.close()
    assert second.cancelled()
    assert seen == [("first", 1), ("second", 0)]


async def test_wait_lets_every_task_finish_those_spawned_meanwhile_too() -> None:
    tasks = TaskSet("test")
    finished: list[str] = []

    async def first() -> None:
        await asyncio.sleep(0.01)
        tasks.spawn(second())
        finished.append("first")

    async def second() -> None:
        await asyncio.sleep(0.01)
        finished.append("second")

    tasks.spawn(first())
    await tasks.wait()
    assert finished == ["first", "second"]
    assert len(tasks) == 0
    assert not tasks.closed
