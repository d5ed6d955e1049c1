"""A token bucket per key: `rate_per_s` tokens a second, at most `burst` saved up.

Keys are principals (requests) or client addresses (failed authentication, `api.auth`)."""

from __future__ import annotations

import time
from collections.abc import Hashable

BUCKETS_MAX = 100_000


class RateLimiter:
    def __init__(self, *, rate_per_s: float, burst: int, clock=time.monotonic) -> None:
        assert rate_per_s >= 0 and burst >= 1
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def take(self, key: Hashable, cost: int = 1) -> float:
        """Spend `cost` tokens (a request: 1; a batch: its items); returns 0 when allowed, else
        the seconds until enough are available. A cost above the burst is allowed once the
        bucket is full, and leaves it in debt: the next requests wait until the rate has paid it
        back, so items per second stay at the rate and a large batch is never refused forever."""
        if self._rate <= 0 or cost <= 0:
            return 0.0
        now = self._clock()
        tokens, since = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - since) * self._rate)
        needed = min(float(cost), self._burst)
        if tokens < needed:
            self._buckets[key] = (tokens, now)
            return (needed - tokens) / self._rate
        if len(self._buckets) >= BUCKETS_MAX and key not in self._buckets:
            self._buckets.clear()  # bounded memory; a full bucket for everyone is the safe reset
        self._buckets[key] = (tokens - cost, now)
        return 0.0

    def give_back(self, key: Hashable) -> None:
        """Return a token `take` spent on something that turned out not to count."""
        if key in self._buckets:
            tokens, since = self._buckets[key]
            self._buckets[key] = (min(self._burst, tokens + 1), since)
