"""TaskSet: the owner of background asyncio tasks.

Every task Conveyor starts belongs to an owner that awaits or cancels it
(STYLE.md, "Every task has an owner"). A TaskSet is that owner for the tasks
of one object (a connection's requests, a server's keep-alive, a consumer's
receive loop):

- it keeps a reference to each task until the task ends (the event loop
  holds only a weak one: an unkept task may be collected mid-flight);
- a task that ends with an exception nobody awaited is logged once, with its
  traceback, at ERROR (asyncio would otherwise log it only when the task is
  garbage-collected, if ever); a cancelled task is not an error;
- ``close()`` cancels every task still running and waits until all have
  ended, so nothing of the owner runs after it is closed; a closed set
  refuses new tasks. ``wait()`` waits for them without cancelling any.

``on_done``, if given, is called with each task once it has ended and left
the set (the native connection starts the requests that were waiting for
room). It costs one callback per task, as a hand-kept set does.

Concurrency: a TaskSet belongs to one event loop and is used from its thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("conveyor.tasks")


class TaskSet:
    """Tasks owned by one object: kept, failures logged, closed together."""

    __slots__ = ("_closed", "_on_done", "_tasks", "name")

    def __init__(
        self, name: str, *, on_done: Callable[[asyncio.Task[Any]], object] | None = None
    ) -> None:
        self.name = name  # says whose tasks these are, in logs and task names
        self._on_done = on_done
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        """The tasks still running."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Start ``coro`` as a task of this set, on the running loop."""
        if self._closed:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise RuntimeError(f"the task set {self.name!r} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name or self.name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def cancel(self) -> None:
        """Cancel every running task, without waiting; the set stays open."""
        for task in self._tasks:
            task.cancel()

    async def wait(self) -> None:
        """Wait until every task has ended, those spawned meanwhile too,
        cancelling none (a server waiting for its connections to finish
        closing)."""
        current = asyncio.current_task()
        while others := [task for task in self._tasks if task is not current]:
            await asyncio.wait(others)

    async def close(self) -> None:
        """Refuse new tasks, cancel the running ones and wait until every one
        has ended. Called from one of the set's own tasks, it waits for the
        others only."""
        self._closed = True
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()  # marks it retrieved: logged here, once
            if exc is not None:
                log.error("task %s of %s failed", task.get_name(), self.name, exc_info=exc)
        if self._on_done is not None:
            self._on_done(task)
