"""Retry backoff: exponential, capped, with jitter.

``backoff(attempts)`` is the delay before the next delivery of a message that
has been delivered ``attempts`` times and failed: base * 2**(attempts-1),
capped at ``cap``, then moved by up to +-``jitter`` of itself so that many
messages failing together do not all come back at the same instant.
"""

from __future__ import annotations

import random

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True):
    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.2

    def backoff(self, attempts: int, rand: random.Random | None = None) -> float:
        attempts = max(attempts, 1)
        # 2**1000 overflows float math; the cap is reached long before.
        exponent = min(attempts - 1, 64)
        delay = min(self.cap, self.base * (2.0**exponent))
        if self.jitter > 0 and delay > 0:
            r = (rand or random).uniform(-self.jitter, self.jitter)
            delay = min(self.cap, max(0.0, delay * (1.0 + r)))
        return delay
