"""What each transition does to a message, decided once for every store.

A store reads what it needs of a message (its state, attempts, queue
settings), asks one of these functions what becomes of it, and persists
the answer in its own dialect: store/sqlite/messages.py runs one statement
per message, store/postgres/messages.py one per round. The functions see
plain values and the caller's clock, never a connection, so the contract
of docs/semantics.md is written here once and each store keeps only its
SQL and its way of committing. A new transition (a cancel, say) is one
function here and each store's statements for its outcome.

The outcomes a settled or lapsed lease can have:
  Retry       back in the queue: ready, or scheduled until available_at;
              its lease is gone and the error is kept as its last error
  Release     ready again at once, its holder and token kept, so that a late
              ack with that token still succeeds until somebody else gets it
  Unclaim     ready again at once as if the delivery had not been made: its
              lease is gone and its attempt is not counted (a delivery that
              never reached the code that handles it)
  DeadLetter  into the queue's dead letters, with the reason and the text
              of its result (``detail``)

States are MessageState's codes, which the schemas store. The stores write
them as the plain ints below: sqlite3 binds an int subclass (an IntEnum
member) about twice as slowly as an int, as it first looks for an adapter.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from conveyor.core.errors import LeaseLost, QueueFull
from conveyor.core.retry import RetryPolicy
from conveyor.core.types import MessageState, QueueConfig

READY: Final[int] = MessageState.READY.value
SCHEDULED: Final[int] = MessageState.SCHEDULED.value
LEASED: Final[int] = MessageState.LEASED.value
DEAD: Final[int] = MessageState.DEAD.value
BLOCKED: Final[int] = MessageState.BLOCKED.value

_HEADS = frozenset((READY, SCHEDULED, LEASED))

# Fencing tokens of one store epoch (one SQLite open, one PostgreSQL node's
# start) begin above every token of the epochs before it.
TOKENS_PER_EPOCH: Final = 1_000_000_000


class LeaseEnd(enum.StrEnum):
    """Why a lease ended with no settle from its consumer, as the reason of
    a message dead-lettered then says it."""

    SESSION_ENDED = "session ended"  # closed, or silent past its timeout
    LEASE_EXPIRED = "lease expired"  # past its deadline, found by the lease monitor
    BROKER_RESTARTED = "broker restarted"  # a SQLite store opened again


class Retry(msgspec.Struct, frozen=True):
    state: int  # READY or SCHEDULED
    available_at: float
    error: str | None  # the last error from now on


class Release(msgspec.Struct, frozen=True):
    """Ready again at once, keeping holder and token."""


RELEASE: Final = Release()


class Unclaim(msgspec.Struct, frozen=True):
    """Ready again at once, the delivery's attempt taken back."""


UNCLAIM: Final = Unclaim()


class DeadLetter(msgspec.Struct, frozen=True):
    reason: str
    error: str | None = None  # the last error from now on (None: the one it had)
    # The message led its group (every message of a group that is not
    # BLOCKED does): with it gone, the next member in enqueue order leads.
    was_head: bool = True

    @property
    def detail(self) -> str:
        """The error of its result (``Result.error``)."""
        return self.reason if self.error is None else f"{self.reason}: {self.error}"


def token_floor(epoch: int) -> int:
    """The least fencing token of a delivery made in ``epoch``."""
    return epoch * TOKENS_PER_EPOCH


def effective_max_attempts(max_attempts: int | None, config: QueueConfig) -> int:
    """A message's own limit of deliveries, else its queue's."""
    return max_attempts or config.max_attempts


def is_group_head(state: int) -> bool:
    """Whether a message of a group in ``state`` is its group's head (the
    one member that may be delivered; the schemas keep it unique)."""
    return state in _HEADS


# -- enqueue and redrive -------------------------------------------------------


def initial_state(available_at: float, now: float, behind_head: bool) -> int:
    """An enqueued message: BLOCKED behind its group's head if the group has
    one, else SCHEDULED until it is due, else READY."""
    if behind_head:
        return BLOCKED
    return SCHEDULED if available_at > now else READY


def check_room(queue: str, max_length: int | None, depth: int, adding: int) -> None:
    """Refuse ``adding`` messages that would take the queue past its
    max_length (``depth``: the messages it holds, dead letters aside)."""
    if max_length is not None and depth + adding > max_length:
        raise QueueFull(
            f"queue {queue!r} holds {depth} of at most {max_length} messages;"
            f" {adding} more do not fit"
        )


def after_redrive(behind_head: bool) -> int:
    """A redriven dead letter is due at once: READY, or BLOCKED behind the
    head its group got meanwhile."""
    return BLOCKED if behind_head else READY


# -- settling and losing leases --------------------------------------------------


def lease_lost(message_id: str, token: int) -> LeaseLost:
    """The refusal of a settle whose token is not the message's current lease."""
    return LeaseLost(
        f"message {message_id} is not leased with token {token}: it was acked, nacked,"
        " delivered again, dead-lettered, or never had that token"
    )


def after_nack(
    attempts: int,
    max_attempts: int | None,
    config: QueueConfig,
    delay: float | None,
    error: str | None,
    now: float,
    undelivered: bool = False,
) -> Retry | DeadLetter | Unclaim:
    """A nack after ``attempts`` deliveries: dead-lettered at the last
    attempt, else retried after ``delay`` (None: the queue's backoff). A
    delivery that never reached its handler is unclaimed, whatever its
    attempts: it was not an attempt."""
    if undelivered:
        return UNCLAIM
    if attempts >= effective_max_attempts(max_attempts, config):
        return DeadLetter(f"failed on all {attempts} attempts", error)
    if delay is None:
        policy = RetryPolicy(config.retry_base, config.retry_max, config.retry_jitter)
        delay = policy.backoff(attempts)
    return Retry(SCHEDULED if delay > 0 else READY, now + delay, error)


def after_dead(reason: str) -> DeadLetter:
    """A consumer dead-letters its lease."""
    return DeadLetter(reason)


def after_lease_end(
    attempts: int, max_attempts: int | None, config: QueueConfig, why: LeaseEnd
) -> Release | DeadLetter:
    """A lease lapsed or its session ended: released, unless the message
    has used up its attempts."""
    if attempts >= effective_max_attempts(max_attempts, config):
        return DeadLetter(f"{why} after {attempts} attempts")
    return RELEASE


def after_expiry(state: int) -> DeadLetter:
    """A message's TTL ran out (READY, SCHEDULED or BLOCKED: a leased one
    is left to its consumer). A blocked member leaves without moving its
    group on: its head still leads."""
    return DeadLetter("expired", None, is_group_head(state))
