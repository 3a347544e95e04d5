"""The one exception tree of Conveyor.

Every error has a stable string ``code``. The code is what crosses the wire;
``error_for_code`` turns it back into the same class on the other side, so a
client catches ``QueueFull`` whether the broker is in-process or remote.
"""

from __future__ import annotations

from typing import ClassVar


class ConveyorError(Exception):
    """Root of every error Conveyor raises on purpose."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidArgument(ConveyorError):
    """An argument is malformed or out of range."""

    code = "invalid_argument"


class BodyTooLarge(InvalidArgument):
    """The message body exceeds the broker's maximum body size."""

    code = "body_too_large"


class QueueNotFound(ConveyorError):
    """No queue of that name exists."""

    code = "queue_not_found"


class QueueExists(ConveyorError):
    """A queue of that name exists already with another configuration."""

    code = "queue_exists"


class QueueFull(ConveyorError):
    """The queue holds max_length messages; nothing was enqueued."""

    code = "queue_full"


class LeaseLost(ConveyorError):
    """The fencing token is no longer current: the message was acked,
    redelivered, released by a nack, or never leased with that token."""

    code = "lease_lost"


class SessionNotFound(ConveyorError):
    """The consumer session is closed, expired or unknown."""

    code = "session_not_found"


class MessageNotFound(ConveyorError):
    """No message of that id exists in that place."""

    code = "message_not_found"


class ResultTimeout(ConveyorError):
    """No result arrived for the message within the timeout."""

    code = "result_timeout"


class StoreLocked(ConveyorError):
    """Another broker process owns the store."""

    code = "store_locked"


class StoreError(ConveyorError):
    """The store failed (disk full, I/O error, corrupt file)."""

    code = "store_error"


class BrokerClosed(ConveyorError):
    """The broker is shut down or shutting down."""

    code = "broker_closed"


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
)


def register_error(cls: type[ConveyorError]) -> type[ConveyorError]:
    """Register an error class defined by an upper layer (server, client)."""
    _register(cls)
    return cls


def error_for_code(code: str, message: str) -> ConveyorError:
    """The error of that code; an unknown code becomes a plain ConveyorError."""
    cls = _BY_CODE.get(code, ConveyorError)
    return cls(message)


def error_codes() -> dict[str, type[ConveyorError]]:
    return dict(_BY_CODE)
