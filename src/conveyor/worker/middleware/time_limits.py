"""Time limits: a task that runs past its ``timeout`` fails with
TimeLimitExceeded (and is retried like any failure). The runtime enforces
the deadline set here: it cancels an async task, stops a task's process in
the process pool, and in the thread pool stops waiting for it and discards
whatever it returns later (a thread cannot be killed)."""

from __future__ import annotations

import time

from conveyor.worker.middleware.base import Execution, Middleware


class TimeLimitExceeded(Exception):
    pass


class TimeLimits(Middleware):
    def __init__(self, default: float | None = None) -> None:
        self.default = default

    def before_execute(self, execution: Execution) -> None:
        limit = execution.task.timeout or self.default
        if limit:
            execution.ctx.deadline = time.monotonic() + limit
