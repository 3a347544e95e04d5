"""Conveyor: a durable message and task queue for Python."""

from conveyor.client.aio import AsyncClient
from conveyor.client.native import BrokerUnreachable
from conveyor.client.sync import Client
from conveyor.core.errors import (
    BodyTooLarge,
    ConveyorError,
    InvalidArgument,
    LeaseLost,
    QueueExists,
    QueueFull,
    QueueNotFound,
    ResultTimeout,
    SessionNotFound,
)
from conveyor.core.types import NewMessage
from conveyor.worker.app import App, Retry, Task, TaskFailed, TaskHandle
from conveyor.worker.context import TaskContext, current_task

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "BodyTooLarge",
    "BrokerUnreachable",
    "Client",
    "ConveyorError",
    "InvalidArgument",
    "LeaseLost",
    "NewMessage",
    "QueueExists",
    "QueueFull",
    "QueueNotFound",
    "ResultTimeout",
    "Retry",
    "SessionNotFound",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskHandle",
    "__version__",
    "current_task",
]
