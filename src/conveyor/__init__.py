"""Conveyor: a durable message and task queue for Python.

The SDK's public names. The errors, ``NewMessage`` and the version are
plain values of core/ and load at once; the client and the task runtime
load on first use of one of their names (PEP 562: a fixed table, ``_LAZY``,
read by the module's ``__getattr__``). So a module of a lower layer
(``import conveyor.store.base`` in a broker) does not load the SDK with the
package root, while ``import conveyor; conveyor.App(...)`` and ``from
conveyor import Client`` work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from conveyor.client.aio import AsyncClient
    from conveyor.client.sync import Client
    from conveyor.worker.app import App, Retry, Task, TaskHandle
    from conveyor.worker.context import TaskContext, current_task
    from conveyor.worker.middleware.time_limits import TimeLimitExceeded

__version__ = VERSION

# Each public name of the client and the runtime, and the module it lives in.
_LAZY = {
    "AsyncClient": "conveyor.client.aio",
    "Client": "conveyor.client.sync",
    "App": "conveyor.worker.app",
    "Retry": "conveyor.worker.app",
    "Task": "conveyor.worker.app",
    "TaskHandle": "conveyor.worker.app",
    "TaskContext": "conveyor.worker.context",
    "current_task": "conveyor.worker.context",
    "TimeLimitExceeded": "conveyor.worker.middleware.time_limits",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found at once from now on
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
