"""Conveyor: a durable message and task queue for Python."""

from conveyor.client.aio import AsyncClient
from conveyor.client.native import BrokerUnreachable, ConnectionLost
from conveyor.client.sync import Client
from conveyor.core.errors import (
    BodyTooLarge,
    BrokerClosed,
    ConveyorError,
    InvalidArgument,
    LeaseLost,
    MessageNotFound,
    QueueExists,
    QueueFull,
    QueueNotFound,
    ResultTimeout,
    SessionNotFound,
    StoreError,
    StoreLocked,
)
from conveyor.core.types import NewMessage
from conveyor.core.wire import ProtocolError, Unauthorized
from conveyor.worker.app import App, Retry, Task, TaskFailed, TaskHandle
from conveyor.worker.context import TaskContext, current_task
from conveyor.worker.middleware.time_limits import TimeLimitExceeded

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "BodyTooLarge",
    "BrokerClosed",
    "BrokerUnreachable",
    "Client",
    "ConnectionLost",
    "ConveyorError",
    "InvalidArgument",
    "LeaseLost",
    "MessageNotFound",
    "NewMessage",
    "ProtocolError",
    "QueueExists",
    "QueueFull",
    "QueueNotFound",
    "ResultTimeout",
    "Retry",
    "SessionNotFound",
    "StoreError",
    "StoreLocked",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskHandle",
    "TimeLimitExceeded",
    "Unauthorized",
    "__version__",
    "current_task",
]
