"""core/tasks.py: a TaskSet keeps its tasks until they end, waits for them
for a while, and on close cancels what is left and awaits it."""

from __future__ import annotations

import asyncio

from conveyor.core.tasks import TaskSet


async def test_a_task_is_kept_until_it_ends() -> None:
    tasks = TaskSet("test")
    release = asyncio.Event()
    task = tasks.spawn(release.wait())
    assert len(tasks) == 1 and tasks
    release.set()
    assert await task is True
    await asyncio.sleep(0)  # the done-callback runs
    assert len(tasks) == 0 and not tasks


async def test_wait_lets_tasks_finish_and_says_whether_they_did() -> None:
    tasks = TaskSet("test")
    release = asyncio.Event()
    blocked = tasks.spawn(release.wait())
    assert await tasks.wait(0.01) is False
    assert not blocked.done()
    release.set()
    assert await tasks.wait(30) is True
    assert blocked.done()


async def test_aclose_cancels_what_is_left_and_awaits_it() -> None:
    tasks = TaskSet("test")
    ended: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("cleaned up")

    task = tasks.spawn(forever())
    await asyncio.sleep(0)
    await tasks.aclose()
    assert task.cancelled() and ended == ["cleaned up"] and not tasks


async def test_a_task_may_close_its_own_set() -> None:
    tasks = TaskSet("test")
    other = tasks.spawn(asyncio.Event().wait())

    async def closer() -> str:
        await tasks.aclose()
        return "closed"

    assert await tasks.spawn(closer()) == "closed"
    assert other.cancelled()


async def test_an_outcome_stays_the_owners_to_read() -> None:
    tasks = TaskSet("owner")

    async def fails() -> None:
        raise ValueError("boom")

    task = tasks.spawn(fails(), name="failing")
    assert await tasks.wait(30) is True
    assert not tasks
    assert isinstance(task.exception(), ValueError)
