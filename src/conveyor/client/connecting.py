"""Reaching a broker: the handshake's checks (run by connection.py, the
protocol's sans-I/O client side), why an attempt failed, and the rounds of
attempts over every address of a URL, shared by the asyncio transport
(native.py) and the blocking one (blocking.py).

A round tries every address in turn; rounds are ``RECONNECT``'s backoff
apart. With a deadline (a client's first connection: ``connect_timeout``),
BrokerUnreachable once past it, naming every address with its reason and
what to check; without one (a consumer reconnecting in the background),
for ever, one INFO line per round and one WARNING once the broker has been
gone ``DOWN_WARNING`` seconds. A wrong token or a peer that does not speak
the protocol (an HTTP port is named as such) is raised at once.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

from conveyor.core import wire
from conveyor.core.errors import BrokerUnreachable, ConnectionLost, ConveyorError, error_for_code
from conveyor.core.retry import RetryPolicy

__all__ = [
    "ATTEMPT_TIMEOUT",
    "DOWN_WARNING",
    "MAX_HELLO_REPLY",
    "NATIVE_PORT_HINT",
    "RECONNECT",
    "Attempts",
    # Declared in core/errors.py with every other error; named here too,
    # where older code imports them from.
    "BrokerUnreachable",
    "ConnectionLost",
    "address",
    "connection_error",
    "failure_reason",
    "hello",
    "hello_reply_length",
    "unreachable",
    "welcome",
]

log = logging.getLogger("conveyor.client")


# Rounds of attempts over every address: 0.05 s apart at first, doubling up
# to 2 s (so a broker back is found within about 2 s), each moved by up to
# half of itself so that the clients of a restarted broker do not all come
# back at the same instant.
RECONNECT = RetryPolicy(base=0.05, cap=2.0, jitter=0.5)
# Seconds one attempt (TCP, TLS, hello) may take at most.
ATTEMPT_TIMEOUT = 5.0
# A client reconnecting this long says so once, as a WARNING.
DOWN_WARNING = 10.0
# A hello reply is a small map; an answer announcing more is not Conveyor's.
MAX_HELLO_REPLY = 64 * 1024

NATIVE_PORT_HINT = (
    "conveyor:// URLs name the native protocol's port (7710 by default);"
    " Conveyor's HTTP API listens on 7711 by default"
)


def hello(token: str | None, name: str) -> bytes:
    """The bytes that open a connection: the preamble and the hello request."""
    args = {"version": wire.VERSION, "token": token, "name": name}
    return wire.PREAMBLE + wire.request(0, "hello", args)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hello_reply_length(head: bytes, where: str) -> int:
    """The length of the hello reply from the first 5 bytes of the broker's
    answer; ProtocolError if the peer is not a Conveyor broker."""
    if head.startswith(b"HTTP/"):
        raise wire.ProtocolError(f"{where} is an HTTP port, not Conveyor's: {NATIVE_PORT_HINT}")
    length = int.from_bytes(head[:4], "big")
    if not 0 < length <= MAX_HELLO_REPLY:
        raise wire.ProtocolError(
            f"{where} does not speak Conveyor's native protocol (it answered {head!r}...):"
            f" {NATIVE_PORT_HINT}"
        )
    return length


def welcome(frame: list[Any]) -> dict[str, Any]:
    """The server's facts from its reply to hello, or the error it sent."""
    if frame[0] == wire.ERROR and len(frame) == 4:
        raise error_for_code(frame[2], frame[3])
    if frame[0] != wire.REPLY or len(frame) != 3 or not isinstance(frame[2], dict):
        raise wire.ProtocolError(f"unexpected reply to hello: {frame!r:.200}")
    return dict(frame[2])


# Failures of an attempt that a few words say best, first match wins.
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (TimeoutError, "timed out"),
    (socket.gaierror, "unknown host"),
    (EOFError, "closed during the handshake"),  # asyncio.IncompleteReadError included
)


def failure_reason(exc: BaseException) -> str:
    """Why one attempt to reach a broker failed, in a few words."""
    if isinstance(exc, ConveyorError):
        return exc.message
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    text = str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
    return (text[:1].lower() + text[1:]) or type(exc).__name__


def _hint(reasons: list[str]) -> str:
    """What to check, for these reasons."""
    if all(r == "unknown host" for r in reasons):
        return "is the host name right?"
    if any(r.startswith("TLS:") for r in reasons):
        return "does the broker serve TLS (conveyors://) with a certificate this client trusts?"
    if any(r == "closed during the handshake" for r in reasons):
        return "is `conveyor serve` running there, with TLS only if the URL is conveyors://?"
    return "is `conveyor serve` running there?"


def _where(failures: dict[tuple[str, int], str]) -> str:
    return ", ".join(f"{address(h, p)} ({why})" for (h, p), why in failures.items())


def unreachable(failures: dict[tuple[str, int], str]) -> BrokerUnreachable:
    return BrokerUnreachable(f"no broker at {_where(failures)}: {_hint(list(failures.values()))}")


def connection_error(frame: list[Any]) -> None:
    """An error frame with request id 0: raise a frame error (the broker
    could not read what this side sent: the stream is lost, and the calls in
    flight must not be sent again); anything else is only logged (the broker
    closes the connection if it must, and the calls are sent again)."""
    error = error_for_code(frame[2], frame[3])
    if isinstance(error, wire.ProtocolError):
        raise error
    log.warning("broker: %s: %s", error.code, error.message)


class Attempts:
    """Rounds of attempts over every address until one answers: what failed
    where, how long one attempt may take, and the pause between rounds.
    With a deadline, the rounds end once past it (``unreachable`` says why);
    without one (a client reconnecting in the background), they go on for
    ever, logging each round. Used as::

        attempts = Attempts(addresses, deadline)
        for attempt in attempts:
            sleep(attempt.pause)
            with attempt:  # a failure a new attempt may mend is noted, not raised
                return connect(*attempt.address, timeout=attempt.timeout)
        raise attempts.unreachable()
    """

    def __init__(self, addresses: list[tuple[str, int]], deadline: float | None) -> None:
        self.addresses = addresses
        self.deadline = deadline
        self.started = time.monotonic()
        self.failures: dict[tuple[str, int], str] = {}
        self.rounds = 0
        self.warned = False

    def __iter__(self) -> Iterator[Attempt]:
        pause = 0.0
        while True:
            for host, port in self.addresses:
                yield Attempt(self, host, port, pause)
                pause = 0.0
            next_round = self._pause()
            if next_round is None:
                return
            pause = next_round

    def attempt_timeout(self) -> float:
        if self.deadline is None:
            return ATTEMPT_TIMEOUT
        return min(ATTEMPT_TIMEOUT, max(0.25, self.deadline - time.monotonic()))

    def failed(self, host: str, port: int, exc: BaseException) -> bool:
        """Note why an address could not be reached; False for what a new
        attempt cannot mend (a bad token, a peer speaking another protocol)."""
        if isinstance(exc, wire.ProtocolError | wire.Unauthorized):
            return False
        self.failures[(host, port)] = failure_reason(exc)
        return True

    def _pause(self) -> float | None:
        """Seconds before the next round, once every address failed; None
        once past the deadline."""
        self.rounds += 1
        wait = RECONNECT.backoff(self.rounds)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return None
            return min(wait, left)
        down = time.monotonic() - self.started
        if down >= DOWN_WARNING and not self.warned:
            self.warned = True
            message = unreachable(self.failures).message
            log.warning("no broker for %.0fs: %s (still trying)", down, message)
        else:
            log.info(
                "reconnecting: no broker at %s; next attempt in %.1fs", _where(self.failures), wait
            )
        return wait

    def unreachable(self) -> BrokerUnreachable:
        """The error once the rounds ended: every address, and why it failed."""
        return unreachable(self.failures)

    def succeeded(self, host: str, port: int) -> None:
        if self.deadline is None:
            down = time.monotonic() - self.started
            log.info("reconnected to %s after %.1fs", address(host, port), down)


class Attempt:
    """One attempt at one address, made in ``with attempt:`` after sleeping
    ``pause`` seconds: a failure a new attempt may mend (refused, timed out,
    closed...) is noted and suppressed; one it cannot is raised."""

    __slots__ = ("attempts", "host", "pause", "port")

    def __init__(self, attempts: Attempts, host: str, port: int, pause: float) -> None:
        self.attempts = attempts
        self.host = host
        self.port = port
        self.pause = pause  # seconds to wait before this attempt: rounds are apart

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def timeout(self) -> float:
        """Seconds this attempt (TCP, TLS, hello) may take, from now."""
        return self.attempts.attempt_timeout()

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if exc is None:
            self.attempts.succeeded(self.host, self.port)
            return False
        if isinstance(exc, ConveyorError | OSError | EOFError):
            return self.attempts.failed(self.host, self.port, exc)
        return False
