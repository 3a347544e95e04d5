"""The transitions of core/transitions.py, decided without a store: what a
nack, a lapsed lease, an expiry, an enqueue and a redrive do to a message.
The conformance suite checks that each store persists these outcomes."""

from __future__ import annotations

import pytest

from conveyor.core.errors import LeaseLost, QueueFull
from conveyor.core.transitions import (
    BLOCKED,
    DEAD,
    LEASED,
    READY,
    RELEASE,
    SCHEDULED,
    TOKENS_PER_EPOCH,
    UNCLAIM,
    DeadLetter,
    LeaseEnd,
    Retry,
    after_dead,
    after_expiry,
    after_lease_end,
    after_nack,
    after_redrive,
    check_room,
    effective_max_attempts,
    initial_state,
    is_group_head,
    lease_lost,
    token_floor,
)
from conveyor.core.types import MessageState, QueueConfig

CONFIG = QueueConfig(name="q", max_attempts=3, retry_base=2.0, retry_max=5.0, retry_jitter=0.0)


def test_the_codes_are_message_states_as_the_schemas_store_them() -> None:
    codes = (READY, SCHEDULED, LEASED, DEAD, BLOCKED)
    assert codes == (0, 1, 2, 3, 4)
    assert [MessageState(c) for c in codes] == list(MessageState)
    assert all(type(c) is int for c in codes)  # bound as plain ints, not enum members


def test_a_nack_retries_after_the_queues_backoff_until_the_last_attempt() -> None:
    assert after_nack(1, None, CONFIG, None, "boom", 100.0) == Retry(SCHEDULED, 102.0, "boom")
    assert after_nack(2, None, CONFIG, None, None, 100.0) == Retry(SCHEDULED, 104.0, None)
    letter = after_nack(3, None, CONFIG, None, "boom", 100.0)
    assert letter == DeadLetter("failed on all 3 attempts", "boom", was_head=True)
    assert isinstance(letter, DeadLetter) and letter.detail == "failed on all 3 attempts: boom"


def test_an_undelivered_nack_is_unclaimed_whatever_its_attempts() -> None:
    for attempts in (1, 3, 10):
        outcome = after_nack(attempts, None, CONFIG, 60.0, "e", 100.0, undelivered=True)
        assert outcome == UNCLAIM


def test_a_nack_with_its_own_delay_and_the_messages_own_limit() -> None:
    assert after_nack(1, None, CONFIG, 0.0, None, 100.0) == Retry(READY, 100.0, None)
    assert after_nack(1, None, CONFIG, 7.5, "e", 100.0) == Retry(SCHEDULED, 107.5, "e")
    assert isinstance(after_nack(1, 1, CONFIG, None, None, 0.0), DeadLetter)
    assert isinstance(after_nack(3, 10, CONFIG, None, None, 0.0), Retry)
    assert effective_max_attempts(None, CONFIG) == 3
    assert effective_max_attempts(10, CONFIG) == 10


def test_the_backoff_is_capped_by_the_queue() -> None:
    config = QueueConfig(name="q", max_attempts=50, retry_base=2.0, retry_max=5.0, retry_jitter=0)
    assert after_nack(10, None, config, None, None, 0.0) == Retry(SCHEDULED, 5.0, None)


@pytest.mark.parametrize(
    ("why", "reason"),
    [
        (LeaseEnd.SESSION_ENDED, "session ended after 3 attempts"),
        (LeaseEnd.LEASE_EXPIRED, "lease expired after 3 attempts"),
        (LeaseEnd.BROKER_RESTARTED, "broker restarted after 3 attempts"),
    ],
)
def test_a_lapsed_lease_is_released_until_the_attempts_are_used_up(
    why: LeaseEnd, reason: str
) -> None:
    assert after_lease_end(2, None, CONFIG, why) is RELEASE
    letter = after_lease_end(3, None, CONFIG, why)
    assert letter == DeadLetter(reason, None, was_head=True)
    assert isinstance(letter, DeadLetter) and letter.detail == reason


def test_an_expiry_moves_the_group_on_only_from_its_head() -> None:
    for state in (READY, SCHEDULED):
        assert after_expiry(state) == DeadLetter("expired", None, was_head=True)
    assert after_expiry(BLOCKED) == DeadLetter("expired", None, was_head=False)
    assert [is_group_head(s) for s in (READY, SCHEDULED, LEASED, DEAD, BLOCKED)] == [
        True, True, True, False, False,
    ]  # fmt: skip


def test_a_consumer_dead_letters_with_its_own_reason() -> None:
    letter = after_dead("poison")
    assert (letter.reason, letter.error, letter.was_head, letter.detail) == (
        "poison", None, True, "poison",
    )  # fmt: skip


def test_an_enqueued_message_waits_behind_its_head_or_its_time() -> None:
    assert initial_state(10.0, 10.0, behind_head=False) == READY
    assert initial_state(10.5, 10.0, behind_head=False) == SCHEDULED
    assert initial_state(10.5, 10.0, behind_head=True) == BLOCKED
    assert initial_state(9.0, 10.0, behind_head=True) == BLOCKED
    assert after_redrive(behind_head=False) == READY
    assert after_redrive(behind_head=True) == BLOCKED


def test_a_full_queue_refuses_what_does_not_fit() -> None:
    check_room("q", None, 10**9, 10**9)
    check_room("q", 5, 3, 2)
    with pytest.raises(QueueFull, match=r"queue 'q' holds 4 of at most 5 messages; 2 more do not"):
        check_room("q", 5, 4, 2)


def test_a_stale_token_is_refused_with_lease_lost() -> None:
    refused = lease_lost("0000000000000001", 7)
    assert isinstance(refused, LeaseLost)
    assert "not leased with token 7" in refused.message


def test_tokens_of_an_epoch_start_above_the_epochs_before() -> None:
    assert token_floor(0) == 0
    assert token_floor(3) == 3 * TOKENS_PER_EPOCH
