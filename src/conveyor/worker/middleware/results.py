"""Results: a task's return value goes back with its ack, serialized, so
that ``TaskHandle.result()`` can read it."""

from __future__ import annotations

from conveyor.worker.middleware.base import Execution, Middleware


class Results(Middleware):
    def after_execute(self, execution: Execution) -> None:
        if execution.action == "ack" and execution.error is None:
            execution.result = execution.task.app.serializer.dumps(execution.value)
