"""What task code can know about the task it runs: ``current_task()``."""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass, field


@dataclass
class TaskContext:
    """The running task. ``token`` is the lease's fencing token: pass it to
    other systems so that they refuse writes from a worker whose lease was
    lost. ``lease_lost`` turns true once the lease could not be renewed before
    its deadline; the task's outcome is then discarded."""

    id: str
    name: str
    queue: str
    attempt: int
    max_attempts: int
    token: int
    deadline: float = 0.0  # time.monotonic() by which the task must end (time limit), 0: none
    _lost: threading.Event = field(default_factory=threading.Event, repr=False)
    started: float = field(default_factory=time.monotonic)

    @property
    def lease_lost(self) -> bool:
        return self._lost.is_set()

    def mark_lease_lost(self) -> None:
        self._lost.set()


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "conveyor_task", default=None
)


def current_task() -> TaskContext:
    """The task this code runs in; RuntimeError outside a task."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("current_task() is only available inside a running task")
    return ctx


def set_current(ctx: TaskContext | None) -> contextvars.Token[TaskContext | None]:
    return _current.set(ctx)


def reset_current(token: contextvars.Token[TaskContext | None]) -> None:
    _current.reset(token)
