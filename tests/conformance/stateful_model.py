"""The model that the state machine (test_stateful.py) holds a broker to:
plain Python, no broker, no store, no clock of its own.

It knows every message enqueued and where it must be (pending: ready,
scheduled, blocked behind its group's head, or leased; acked; dead; purged),
who holds a live lease with which token and until when, which tokens may
still settle a message, the queue's dedup keys, its max_length, and the
running totals that ``stats`` reports. Each method is one transition of
docs/semantics.md; the machine calls it after the broker did the same and
compares.

Group order: a group's messages wait behind its head (the one member that
is not blocked) and the next to lead is the blocked member enqueued first. A
message enqueued while its group has a head waits, whichever call it came
in; a redriven dead letter also waits behind a head the group has, and goes
before the members enqueued after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from conveyor.core.ids import parse_id
from conveyor.core.retry import RetryPolicy
from conveyor.core.ring import bucket_of

QUEUE = "model"
VISIBILITY = 5.0
SESSION_TIMEOUT = 10.0
MAX_ATTEMPTS = 3
DEDUP_WINDOW = 8.0
BUCKETS = 2  # fewer buckets than groups: groups share buckets
GROUPS = ("g0", "g1", "g2", "g3")  # g0, g2 and g3 share bucket 0
RETRY = RetryPolicy(base=1.0, cap=4.0, jitter=0.0)  # no jitter: the model predicts times

PENDING, ACKED, DEAD, PURGED = "pending", "acked", "dead", "purged"
# A message's state in the store's rows (both stores use these numbers).
READY, SCHEDULED, LEASED, DEAD_ROW, BLOCKED = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Spec:
    """One message to enqueue."""

    priority: int = 0
    group: str | None = None
    delay: float | None = None
    ttl: float | None = None
    dedup_key: str | None = None


@dataclass
class Msg:
    id: str
    body: bytes
    priority: int
    group: str | None
    available_at: float
    expires_at: float | None
    status: str = PENDING
    blocked: bool = False  # waiting behind its group's head
    attempts: int = 0
    token: int = 0  # of the latest delivery
    honoured: bool = False  # the latest token may still settle the message
    holder: str | None = None  # session with a live lease (state leased)
    deadline: float = 0.0
    reason: str | None = None  # why it is dead

    @property
    def seq(self) -> int:
        return parse_id(self.id)

    @property
    def bucket(self) -> int | None:
        return None if self.group is None else bucket_of(self.group, BUCKETS)

    def order(self) -> tuple[int, float, int]:
        """Delivery order: priority high first, then available_at, then enqueue order."""
        return (-self.priority, self.available_at, self.seq)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def deliverable(self, now: float) -> bool:
        return (
            self.status == PENDING
            and self.holder is None
            and not self.blocked
            and self.available_at <= now
            and not self.expired(now)
        )


@dataclass
class Sess:
    capacity: int
    seen_min: float  # the store's last_seen is at least this...
    seen_max: float  # ...and at most this
    subscribed: bool = False


@dataclass
class Totals:
    """The running totals of ``stats``, in the order of ``as_tuple``."""

    enqueued: int = 0
    acked: int = 0
    dead: int = 0
    delivered: int = 0
    nacked: int = 0
    expired: int = 0
    lease_expired: int = 0

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


class Model:
    def __init__(self) -> None:
        self.msgs: dict[str, Msg] = {}
        self.sessions: dict[str, Sess] = {}
        self.closed: list[str] = []
        self.deliveries: list[tuple[str, int, str]] = []  # (id, token, session), all ever made
        self.totals = Totals()
        self.dedup: dict[str, tuple[str, float]] = {}  # key: first id, remembered until
        self.max_length: int | None = None

    # -- views ------------------------------------------------------------------

    def pending(self) -> list[Msg]:
        return [m for m in self.msgs.values() if m.status == PENDING]

    def live(self) -> list[Msg]:
        return [m for m in self.pending() if m.holder is not None]

    def with_status(self, status: str) -> list[Msg]:
        return [m for m in self.msgs.values() if m.status == status]

    def head(self, group: str) -> Msg | None:
        """The member of the group that leads (may be delivered, or is held)."""
        heads = [m for m in self.pending() if m.group == group and not m.blocked]
        assert len(heads) <= 1, f"model: group {group} has heads {heads}"
        return heads[0] if heads else None

    def held(self) -> list[tuple[str, int, str]]:
        """The latest delivery of each message whose token is still honoured."""
        return [
            (i, t, s)
            for i, t, s in self.deliveries
            if self.msgs[i].honoured and self.msgs[i].token == t
        ]

    def expected_rows(self) -> dict[int, tuple[frozenset[int], str | None]]:
        """Per stored message: the row states it may be in, and its holder if
        leased. Acked and purged messages have no row."""
        rows: dict[int, tuple[frozenset[int], str | None]] = {}
        for m in self.msgs.values():
            if m.status == DEAD:
                rows[m.seq] = (frozenset({DEAD_ROW}), None)
            elif m.status == PENDING and m.holder is not None:
                rows[m.seq] = (frozenset({LEASED}), m.holder)
            elif m.status == PENDING and m.blocked:
                rows[m.seq] = (frozenset({BLOCKED}), None)
            elif m.status == PENDING:
                # Due but not yet made ready (the next claim or sweep does that).
                rows[m.seq] = (frozenset({READY, SCHEDULED}), None)
        return rows

    # -- enqueue ------------------------------------------------------------------

    def first_of(self, key: str | None, now: float) -> str | None:
        """The id a dedup key stands for now, if it is within its window."""
        if key is None or key not in self.dedup:
            return None
        first, until = self.dedup[key]
        return first if until > now else None

    def new_in(self, specs: Iterable[Spec], now: float) -> int:
        """How many messages of a batch would be stored (the rest are duplicates)."""
        keys: set[str] = set()
        count = 0
        for s in specs:
            if s.dedup_key is None or (
                self.first_of(s.dedup_key, now) is None and s.dedup_key not in keys
            ):
                count += 1
                if s.dedup_key is not None:
                    keys.add(s.dedup_key)
        return count

    def fits(self, specs: list[Spec], now: float) -> bool:
        """Whether the batch fits in max_length; one of duplicates only adds nothing."""
        limit, new = self.max_length, self.new_in(specs, now)
        return limit is None or new == 0 or len(self.pending()) + new <= limit

    def add(self, message_id: str, body: bytes, spec: Spec, now: float) -> Msg:
        """A message the broker stored: it waits if its group has a head."""
        blocked = spec.group is not None and self.head(spec.group) is not None
        m = Msg(
            id=message_id,
            body=body,
            priority=spec.priority,
            group=spec.group,
            available_at=now + spec.delay if spec.delay else now,
            expires_at=None if spec.ttl is None else now + spec.ttl,
            blocked=blocked,
        )
        self.msgs[message_id] = m
        self.totals.enqueued += 1
        if spec.dedup_key is not None:
            self.dedup[spec.dedup_key] = (message_id, now + DEDUP_WINDOW)
        return m

    # -- leases ---------------------------------------------------------------------

    def deliver(self, m: Msg, token: int, sid: str, deadline: float) -> None:
        m.attempts, m.token, m.honoured = m.attempts + 1, token, True
        m.holder, m.deadline = sid, deadline
        self.deliveries.append((m.id, token, sid))
        self.totals.delivered += 1

    def promote(self, group: str | None) -> None:
        """The head of a group finished: the first blocked member leads."""
        if group is None or self.head(group) is not None:
            return
        waiting = [m for m in self.pending() if m.group == group and m.blocked]
        if waiting:
            min(waiting, key=lambda m: m.seq).blocked = False

    def ack(self, m: Msg) -> None:
        m.status, m.holder, m.honoured = ACKED, None, False
        self.totals.acked += 1
        self.promote(m.group)

    def kill(self, m: Msg, reason: str) -> None:
        """Dead-letter a message; a head that dies lets the next one lead."""
        was_head = not m.blocked
        m.status, m.reason, m.holder, m.honoured = DEAD, reason, None, False
        self.totals.dead += 1
        if was_head:
            self.promote(m.group)

    def nack(self, m: Msg, delay: float | None, now: float) -> None:
        self.totals.nacked += 1
        if m.attempts >= MAX_ATTEMPTS:
            self.kill(m, f"failed on all {m.attempts} attempts")
            return
        m.holder, m.honoured = None, False
        m.available_at = now + (delay if delay is not None else RETRY.backoff(m.attempts))

    def release(self, m: Msg, why: str) -> None:
        """A lease ends without a settle: ready again (token still honoured),
        or dead if it used up its attempts."""
        m.holder = None
        self.totals.lease_expired += 1
        if m.attempts >= MAX_ATTEMPTS:
            self.kill(m, f"{why} after {m.attempts} attempts")

    def forget_session(self, sid: str, why: str) -> None:
        for m in sorted(self.live(), key=lambda m: m.seq):
            if m.holder == sid:
                self.release(m, why)
        del self.sessions[sid]
        self.closed.append(sid)

    # -- the lease monitor ---------------------------------------------------------

    def sweep(self, now: float, sessions_expired: Iterable[str]) -> tuple[int, int]:
        """One pass, in the monitor's order: silent sessions end, lapsed leases
        are released, then messages past their TTL that nobody holds die.
        Returns (leases released for their deadline, messages expired)."""
        for sid in sorted(sessions_expired):
            self.forget_session(sid, "session ended")
        due = sorted((m for m in self.live() if m.deadline < now), key=lambda m: m.seq)
        for m in due:
            self.release(m, "lease expired")
        # Every one of them, heads and members behind them alike: a head that
        # dies lets the next lead, and that one dies too if its time is up.
        expired = [m for m in self.pending() if m.holder is None and m.expired(now)]
        for m in sorted(expired, key=lambda m: (m.blocked, m.seq)):
            self.totals.expired += 1
            self.kill(m, "expired")
        return len(due), len(expired)

    # -- queue operations ------------------------------------------------------------

    def purge(self) -> int:
        """Waiting messages go (ready, delayed, blocked, and released ones
        whose token was still honoured); leased ones stay."""
        gone = [m for m in self.pending() if m.holder is None]
        for m in gone:
            m.status, m.honoured = PURGED, False
        return len(gone)

    def redrive(self, ids: list[str] | None, now: float) -> int:
        """Dead letters become ready now with their attempts reset, in enqueue
        order; one of a group that has a head waits behind it."""
        dead = self.with_status(DEAD)
        chosen = dead if ids is None else [m for m in dead if m.id in set(ids)]
        for m in sorted(chosen, key=lambda m: m.seq):
            blocked = m.group is not None and self.head(m.group) is not None
            m.status, m.reason, m.attempts, m.available_at = PENDING, None, 0, now
            m.blocked = blocked
        return len(chosen)
