"""Middleware: hooks around enqueueing and executing tasks.

The runtime runs a task and records what happened in an ``Execution``; the
``after_execute`` hooks, in order, decide what becomes of the message
(``action``: ack with a result, nack for a retry, dead, or discard when the
lease was lost). Retries, time limits and results are themselves middleware.
A hook that raises is logged and skipped: it never stops the worker.
Failed runs are logged by FailureLogs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from conveyor.core.types import NewMessage
    from conveyor.worker.app import Task
    from conveyor.worker.context import TaskContext

Action = Literal["ack", "nack", "dead", "discard"]


@dataclass
class Execution:
    task: Task[Any, Any]
    ctx: TaskContext
    args: list[Any]
    kwargs: dict[str, Any]
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""
    # What to do with the message; set by the runtime and the middleware.
    action: Action = "ack"
    result: bytes | None = None
    delay: float | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Middleware:
    """Override any of the hooks; the defaults do nothing."""

    def before_enqueue(self, task: Task[Any, Any], message: NewMessage) -> NewMessage | None:
        return None

    def after_enqueue(self, task: Task[Any, Any], message: NewMessage, message_id: str) -> None:
        return None

    def before_execute(self, execution: Execution) -> None:
        return None

    def after_execute(self, execution: Execution) -> None:
        return None


def default_middleware() -> list[Middleware]:
    from conveyor.worker.middleware.failure_logs import FailureLogs
    from conveyor.worker.middleware.results import Results
    from conveyor.worker.middleware.retries import Retries
    from conveyor.worker.middleware.time_limits import TimeLimits

    # FailureLogs reads what Retries decided.
    return [TimeLimits(), Retries(), FailureLogs(), Results()]
