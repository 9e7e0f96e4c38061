"""Per-node rate limits: one token bucket per key, with a bounded number of keys in memory."""
from __future__ import annotations

import time
from collections import OrderedDict


class TokenBuckets:
    """`rate` tokens per second up to `burst`; each call takes one. At most max_keys buckets are kept:
    the least recently used goes first, and an idle bucket has refilled anyway, so dropping it
    changes nothing for an honest node."""

    def __init__(self, rate: float, burst: int, max_keys: int = 200_000, clock=time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, float(burst), max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 if a token was taken; else the seconds until one will be there."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
