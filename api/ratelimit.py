"""A per-principal token bucket: `rate_per_s` tokens a second, at most `burst` saved up."""

from __future__ import annotations

import time
import uuid

BUCKETS_MAX = 100_000


class RateLimiter:
    def __init__(self, *, rate_per_s: float, burst: int, clock=time.monotonic) -> None:
        assert rate_per_s >= 0 and burst >= 1
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def take(self, principal_id: uuid.UUID) -> float:
        """Spend one token; returns 0 when allowed, else the seconds until one is available."""
        if self._rate <= 0:
            return 0.0
        now = self._clock()
        tokens, since = self._buckets.get(principal_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - since) * self._rate)
        if tokens < 1:
            self._buckets[principal_id] = (tokens, now)
            return (1 - tokens) / self._rate
        if len(self._buckets) >= BUCKETS_MAX and principal_id not in self._buckets:
            self._buckets.clear()  # bounded memory; a full bucket for everyone is the safe reset
        self._buckets[principal_id] = (tokens - 1, now)
        return 0.0
