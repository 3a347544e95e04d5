"""Retries: a failing task is nacked for another attempt after a backoff,
until its attempts are used up; then (or for an exception outside the
task's ``retry_on``) it is dead-lettered with the traceback as the reason.
``raise Retry(delay=...)`` asks for another attempt explicitly."""

from __future__ import annotations

from conveyor.core.retry import RetryPolicy
from conveyor.worker.middleware.base import Execution, Middleware


class Retries(Middleware):
    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy(base=1.0, cap=300.0, jitter=0.2)

    def after_execute(self, execution: Execution) -> None:
        from conveyor.worker.app import Retry

        error = execution.error
        if error is None or execution.action == "discard":
            return
        ctx = execution.ctx
        task = execution.task
        retryable = isinstance(error, (Retry, *task.retry_on))
        if retryable and ctx.attempt < ctx.max_attempts:
            execution.action = "nack"
            if isinstance(error, Retry) and error.delay is not None:
                execution.delay = error.delay
            elif callable(task.backoff):
                execution.delay = float(task.backoff(ctx.attempt))
            elif task.backoff is not None:
                execution.delay = float(task.backoff)
            else:
                execution.delay = self.policy.backoff(ctx.attempt)
            execution.reason = execution.traceback
        else:
            execution.action = "dead"
            execution.reason = execution.traceback or repr(error)
