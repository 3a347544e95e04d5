"""The one exception tree of Conveyor, every class of it in this module.

Every error has a stable string ``code``: the code is what crosses the wire,
and ``error_for_code`` turns it back into the same class on the other side,
so a client catches ``QueueFull`` whether the broker is in-process or remote.
The registry is complete as soon as this module is imported (every class
below is registered at its end), whichever other modules were imported.

Each class also declares ``http_status``, the status the HTTP API answers it
with (docs/http.md, "Errors"); an error the HTTP API should never produce
keeps the root's 500.

Where an error is raised is its layer's business: the store maps its
driver's errors at its own boundary (store/sqlite/errors.py,
store/postgres/driver.py), the protocol errors come from the codec and the
server, the connection errors from the client, ``TaskFailed`` from a task's
result. Older import paths (``conveyor.core.wire.ProtocolError``,
``conveyor.client.connecting.ConnectionLost``,
``conveyor.worker.app.TaskFailed``...) still name the same classes.
"""

from __future__ import annotations

from typing import ClassVar


class ConveyorError(Exception):
    """Root of every error Conveyor raises on purpose."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])


# -- arguments and the contract ---------------------------------------------------


class InvalidArgument(ConveyorError):
    """An argument is malformed or out of range."""

    code = "invalid_argument"
    http_status = 400


class BodyTooLarge(InvalidArgument):
    """The message body exceeds the broker's maximum body size."""

    code = "body_too_large"
    http_status = 413


class QueueNotFound(ConveyorError):
    """No queue of that name exists."""

    code = "queue_not_found"
    http_status = 404


class QueueExists(ConveyorError):
    """A queue of that name exists already with another configuration."""

    code = "queue_exists"
    http_status = 409


class QueueFull(ConveyorError):
    """The queue holds max_length messages; nothing was enqueued."""

    code = "queue_full"
    http_status = 429


class LeaseLost(ConveyorError):
    """The fencing token is no longer current: the message was acked,
    redelivered, released by a nack, or never leased with that token."""

    code = "lease_lost"
    http_status = 409


class SessionNotFound(ConveyorError):
    """The consumer session is closed, expired or unknown."""

    code = "session_not_found"
    http_status = 404


class MessageNotFound(ConveyorError):
    """No message of that id exists in that place."""

    code = "message_not_found"
    http_status = 404


class ResultTimeout(ConveyorError):
    """No result arrived for the message within the timeout."""

    code = "result_timeout"
    http_status = 408


# -- the store and the broker -------------------------------------------------------


class StoreLocked(ConveyorError):
    """Another process holds the store: another broker owns it, or holds
    its database locked."""

    code = "store_locked"
    http_status = 503


class StoreError(ConveyorError):
    """The store failed (disk full, I/O error, corrupt file)."""

    code = "store_error"


class BrokerClosed(ConveyorError):
    """The broker is shut down or shutting down."""

    code = "broker_closed"
    http_status = 503


# -- the protocol (core/wire.py, server/) ----------------------------------------


class ProtocolError(ConveyorError):
    """The peer broke the protocol: bad preamble, frame or handshake."""

    code = "protocol_error"


class FrameTooLarge(ProtocolError):
    """A frame is longer than the receiver's maximum frame size."""

    code = "frame_too_large"


class ReplyTooLarge(ConveyorError):
    """The reply would exceed the maximum frame size (a list of too many
    queues, say); nothing was changed. Lists of messages never get it: they
    are cut to fit."""

    code = "reply_too_large"


class TooManyConnections(ConveyorError):
    """The server holds as many connections as it accepts (its
    --max-connections): try another node, or later."""

    code = "too_many_connections"


class Unauthorized(ConveyorError):
    """The auth token is missing or wrong."""

    code = "unauthorized"
    http_status = 401


class UnknownOperation(ConveyorError):
    """The request names an operation the server does not have."""

    code = "unknown_operation"
    http_status = 404


# -- the client and tasks -----------------------------------------------------------


class ConnectionLost(ConveyorError):
    """The connection to the broker was lost and could not be made again in time."""

    code = "connection_lost"


class BrokerUnreachable(ConnectionLost):
    """No broker answered at any address of the URL in time."""

    code = "broker_unreachable"


class TaskFailed(ConveyorError):
    """The task failed for good (dead-lettered). Its message names the
    exception it ended with (``tasks.bake (ID) failed: ValueError: no
    dough``); ``remote_traceback`` is the whole traceback the worker kept."""

    code = "task_failed"

    def __init__(self, message: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback or message


# -- the registry -------------------------------------------------------------------

_BY_CODE: dict[str, type[ConveyorError]] = {}


def _register(*classes: type[ConveyorError]) -> None:
    for cls in classes:
        if cls.code in _BY_CODE:
            raise RuntimeError(f"duplicate error code {cls.code!r}")
        _BY_CODE[cls.code] = cls


_register(
    ConveyorError,
    InvalidArgument,
    BodyTooLarge,
    QueueNotFound,
    QueueExists,
    QueueFull,
    LeaseLost,
    SessionNotFound,
    MessageNotFound,
    ResultTimeout,
    StoreLocked,
    StoreError,
    BrokerClosed,
    ProtocolError,
    FrameTooLarge,
    ReplyTooLarge,
    TooManyConnections,
    Unauthorized,
    UnknownOperation,
    ConnectionLost,
    BrokerUnreachable,
    TaskFailed,
)


def register_error(cls: type[ConveyorError]) -> type[ConveyorError]:
    """Register an error class defined outside Conveyor (an extension's);
    Conveyor's own are all registered above."""
    _register(cls)
    return cls


def error_for_code(code: str, message: str) -> ConveyorError:
    """The error of that code; an unknown code becomes a plain ConveyorError."""
    cls = _BY_CODE.get(code, ConveyorError)
    return cls(message)


def error_codes() -> dict[str, type[ConveyorError]]:
    return dict(_BY_CODE)
