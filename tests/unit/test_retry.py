"""Retry backoff: exponential from ``base``, capped at ``cap``, moved by at
most +-``jitter`` of itself, never negative and never above the cap."""

from __future__ import annotations

import random

import pytest

from conveyor.core.retry import RetryPolicy


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.base, policy.cap, policy.jitter) == (1.0, 300.0, 0.2)


def test_exponential_without_jitter() -> None:
    policy = RetryPolicy(base=0.5, cap=1000.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def test_capped() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize("attempts", [65, 100, 1024, 10**6, 10**18])
def test_huge_attempt_counts_do_not_overflow(attempts: int) -> None:
    assert RetryPolicy(base=1.0, cap=300.0, jitter=0.0).backoff(attempts) == 300.0
    delay = RetryPolicy(base=1.0, cap=300.0, jitter=0.5).backoff(attempts)
    assert 150.0 <= delay <= 300.0


@pytest.mark.parametrize("attempts", [0, -1, -100])
def test_attempts_below_one_count_as_one(attempts: int) -> None:
    policy = RetryPolicy(base=3.0, cap=100.0, jitter=0.0)
    assert policy.backoff(attempts) == 3.0


def test_zero_base_means_no_delay() -> None:
    assert RetryPolicy(base=0.0, cap=10.0, jitter=0.5).backoff(5) == 0.0


@pytest.mark.parametrize("attempts", [1, 2, 3, 4, 5])
def test_jitter_stays_within_bounds_and_uses_both_sides(attempts: int) -> None:
    policy = RetryPolicy(base=1.0, cap=1000.0, jitter=0.2)
    nominal = 2.0 ** (attempts - 1)
    rand = random.Random(attempts)
    delays = [policy.backoff(attempts, rand) for _ in range(2000)]
    assert all(nominal * 0.8 <= d <= nominal * 1.2 for d in delays)
    assert min(delays) < nominal * 0.9
    assert max(delays) > nominal * 1.1
    assert len(set(delays)) > 1000  # it really is random


def test_jitter_never_exceeds_the_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=30.0, jitter=0.5)
    rand = random.Random(7)
    delays = [policy.backoff(10, rand) for _ in range(2000)]
    assert all(15.0 <= d <= 30.0 for d in delays)
    assert max(delays) == 30.0  # half the draws push above the cap and are clipped


def test_full_jitter_never_goes_negative() -> None:
    policy = RetryPolicy(base=2.0, cap=100.0, jitter=1.0)
    rand = random.Random(3)
    delays = [policy.backoff(2, rand) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in delays)


def test_same_seed_same_delays() -> None:
    policy = RetryPolicy(base=1.0, cap=60.0, jitter=0.3)
    a = [policy.backoff(n, random.Random(42)) for n in range(1, 10)]
    b = [policy.backoff(n, random.Random(42)) for n in range(1, 10)]
    assert a == b


def test_without_rand_uses_module_random() -> None:
    policy = RetryPolicy(base=1.0, cap=60.0, jitter=0.3)
    delays = {policy.backoff(3) for _ in range(50)}
    assert len(delays) > 1
    assert all(2.8 <= d <= 5.2 for d in delays)


def test_backoff_grows_with_attempts_on_average() -> None:
    policy = RetryPolicy(base=1.0, cap=1e9, jitter=0.2)
    rand = random.Random(1)
    # Adjacent steps double; jitter of 20% cannot reverse the order.
    for attempts in range(1, 20):
        assert policy.backoff(attempts, rand) < policy.backoff(attempts + 1, rand)


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.base = 2.0  # type: ignore[misc]
