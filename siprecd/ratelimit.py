"""Token buckets per key (an app id, or a client address before it has
authenticated): ``rate`` tokens a second up to ``burst``; one per request.

Sans-IO: time comes from an injected IReactorTime. Idle buckets are
forgotten once they would be full again, so the table stays as small as
the set of recent callers.
"""

import math

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, clock, rate, burst, max_keys=100_000):
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets = {}          # key -> (tokens, at)

    def take(self, key):
        """0.0 when the request may go ahead, else the seconds to wait."""
        now = self.clock.seconds()
        tokens, at = self._buckets.get(key, (self.burst, now))
        # max(0, ...): the clock is the wall clock, and a step back (NTP)
        # must not drain the bucket by the length of the step.
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_keys:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def give_back(self, key):
        """Return the token a :meth:`take` took (a request that turned out
        not to count, e.g. an authentication that succeeded)."""
        entry = self._buckets.get(key)
        if entry is not None:
            tokens, at = entry
            self._buckets[key] = (min(self.burst, tokens + 1.0), at)

    def peek(self, key):
        """Like :meth:`take` without taking: 0.0 when a token is there."""
        entry = self._buckets.get(key)
        if entry is None:
            return 0.0
        tokens, at = entry
        tokens = min(self.burst, tokens + max(0.0, self.clock.seconds() - at) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait):
        """Whole seconds for a Retry-After header (at least 1)."""
        return max(1, math.ceil(wait))

    def _forget_full(self, now):
        refill = self.burst / self.rate
        for key, (_, at) in list(self._buckets.items()):
            if now - at >= refill:
                del self._buckets[key]
