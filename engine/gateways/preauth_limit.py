"""A rate limit per client IP for requests that carry no valid credentials.

Per-account limits start only once a key is known: unauthenticated requests (market data
reads, WebSocket upgrades without a key, and every failed key) were never limited, so one
client could guess keys or poll as fast as the node answered. Each IP gets a token bucket;
the table is bounded (the least recently seen IPs go first), so a spread of sources cannot
grow it without end.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from engine.auth import TokenBucket

MAX_IPS = 10_000


class PerIpLimit:
    def __init__(self, rate: float, burst: float, max_ips: int = MAX_IPS) -> None:
        self.rate = rate
        self.burst = burst or max(1.0, rate)
        self.max_ips = max_ips
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refused = 0

    def allow(self, ip: str | None, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True  # off
        ip = ip or "?"
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= self.max_ips:
                self._buckets.popitem(last=False)
            bucket = self._buckets[ip] = TokenBucket(self.rate, self.burst)
        else:
            self._buckets.move_to_end(ip)
        if bucket.allow(time.monotonic() if now is None else now):
            return True
        self.refused += 1
        return False
