"""Failure logs: a task that raises is said so in the worker's log, at the
level its outcome deserves. Each failed attempt that will be retried is a
WARNING naming the task, the message id, the attempt (n of m), the
exception's type and message, and when it runs again; a dead-lettering is an
ERROR with the traceback. A ``raise Retry(...)`` the task asked for is INFO.

It reads what Retries decided (``action``, ``delay``), so it comes after
Retries in the chain. A run whose lease was lost is left to the runtime,
which logs that its outcome was discarded. A successful run costs one check.
"""

from __future__ import annotations

import logging

from conveyor.worker.middleware.base import Execution, Middleware


def describe(error: BaseException) -> str:
    """``ValueError: no dough`` (the type alone for an empty message)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class FailureLogs(Middleware):
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("conveyor.worker")

    def after_execute(self, execution: Execution) -> None:
        from conveyor.worker.app import Retry

        error = execution.error
        if error is None or execution.ctx.lease_lost:
            return
        ctx = execution.ctx
        run = f"task {ctx.name} {ctx.id} attempt {ctx.attempt} of {ctx.max_attempts}"
        if execution.action == "nack":
            again = (
                "after the queue's backoff"
                if execution.delay is None
                else f"in {execution.delay:.3g}s"
            )
            if isinstance(error, Retry):
                self.log.info("%s asked for a retry (%s); again %s", run, error, again)
            else:
                self.log.warning("%s failed: %s; again %s", run, describe(error), again)
        elif execution.action == "dead":
            if ctx.attempt >= ctx.max_attempts:
                why = "its last attempt"
            else:
                why = "not retried: not in the task's retry_on"
            self.log.error(
                "%s failed: %s; dead-lettered (%s)\n%s",
                run,
                describe(error),
                why,
                (execution.traceback or describe(error)).rstrip(),
            )
