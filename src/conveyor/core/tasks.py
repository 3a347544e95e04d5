"""Owned asyncio tasks: every task Conveyor starts belongs to a ``TaskSet``
of the object that started it, which keeps it until it ends and, on close,
waits for it or cancels it. No task is fire-and-forget: nothing is lost to
the garbage collector mid-run, and nothing outlives its owner. A task's
outcome stays its owner's business: awaited, read by a done-callback, or
(never read) reported by asyncio as usual.

    tasks = TaskSet("client")
    tasks.spawn(flush())          # kept until it ends
    await tasks.wait(2.0)         # let what runs finish, for a while
    await tasks.aclose()          # then cancel what is left, and await it

The set costs one ``set.add`` and one done-callback per task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TaskSet:
    """The tasks one object owns, each kept until it ends."""

    __slots__ = ("_tasks", "name")

    def __init__(self, name: str = "") -> None:
        self.name = name  # whose tasks they are, for a reader of the code or a debugger
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this set (on the running loop)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the tasks running now (and any
        they start meanwhile) to end; whether they all did."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while others := self._others():
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(others, timeout=left)
        return True

    def cancel(self) -> None:
        """Ask every task to stop (they end at their next await)."""
        for task in self._tasks:
            task.cancel()

    async def aclose(self) -> None:
        """Cancel every task and wait until all have ended."""
        while others := self._others():
            for task in others:
                task.cancel()
            await asyncio.wait(others)

    def _others(self) -> set[asyncio.Task[Any]]:
        """The tasks but the one running this code (a task of the set may
        close its own set: it does not wait for itself)."""
        current = asyncio.current_task()
        return {task for task in self._tasks if task is not current}
