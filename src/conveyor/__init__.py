"""Conveyor: a durable message and task queue for Python."""

from conveyor.client.aio import AsyncClient
from conveyor.client.sync import Client
from conveyor.core.errors import (
    BodyTooLarge,
    BrokerClosed,
    BrokerUnreachable,
    ConnectionLost,
    ConveyorError,
    FrameTooLarge,
    InvalidArgument,
    LeaseLost,
    MessageNotFound,
    ProtocolError,
    QueueExists,
    QueueFull,
    QueueNotFound,
    ReplyTooLarge,
    ResultTimeout,
    SessionNotFound,
    StoreError,
    StoreLocked,
    TaskFailed,
    TooManyConnections,
    Unauthorized,
    UnknownOperation,
)
from conveyor.core.types import NewMessage
from conveyor.core.version import VERSION
from conveyor.worker.app import App, Retry, Task, TaskHandle
from conveyor.worker.context import TaskContext, current_task
from conveyor.worker.middleware.time_limits import TimeLimitExceeded

__version__ = VERSION

__all__ = [
    "App",
    "AsyncClient",
    "BodyTooLarge",
    "BrokerClosed",
    "BrokerUnreachable",
    "Client",
    "ConnectionLost",
    "ConveyorError",
    "FrameTooLarge",
    "InvalidArgument",
    "LeaseLost",
    "MessageNotFound",
    "NewMessage",
    "ProtocolError",
    "QueueExists",
    "QueueFull",
    "QueueNotFound",
    "ReplyTooLarge",
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
    "TooManyConnections",
    "Unauthorized",
    "UnknownOperation",
    "__version__",
    "current_task",
]
