"""Rate limits with the `limits` library: in memory by default, in Redis when
OSTIARY_REDIS_URL is set, so that replicas share the counters.

Rates are strings such as "100/minute" or "5/minute;20/hour" (every part must allow).
"""

from __future__ import annotations

import logging
import math
import threading
import time

from limits import parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app import metrics

log = logging.getLogger("ostiary.ratelimit")


class RateLimiter:
    def __init__(self, redis_url: str | None = None, *, enabled: bool = True):
        self.enabled = enabled
        self.shared = redis_url is not None
        storage = storage_from_string(redis_url, socket_timeout=0.5) if redis_url else MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        self._parsed: dict[str, list] = {}
        self._lock = threading.Lock()

    def _limits(self, rate: str):
        parsed = self._parsed.get(rate)
        if parsed is None:
            parsed = self._parsed[rate] = parse_many(rate)
        return parsed

    def _wait(self, item, key) -> int:
        reset_at, _ = self._limiter.get_window_stats(item, *key)
        return max(1, math.ceil(reset_at - time.time()))

    def hit(self, rate: str, *key: str) -> int | None:
        """Count one request for `key`; None if allowed, else the seconds to wait."""
        if not self.enabled:
            return None
        try:
            for item in self._limits(rate):
                if not self._limiter.hit(item, *key):
                    metrics.RATE_LIMITED.labels(key[0]).inc()
                    return self._wait(item, key)
        except Exception:  # noqa: BLE001 - a limiter outage must not take sign-in or /token down
            log.warning("rate limiter storage unavailable; allowing the request")
        return None

    def blocked(self, rate: str, *key: str) -> int | None:
        """Without counting: seconds to wait if `key` is already over `rate`, else None."""
        if not self.enabled:
            return None
        try:
            for item in self._limits(rate):
                if not self._limiter.test(item, *key):
                    metrics.RATE_LIMITED.labels(key[0]).inc()
                    return self._wait(item, key)
        except Exception:  # noqa: BLE001
            log.warning("rate limiter storage unavailable; allowing the request")
        return None

    def count(self, rate: str, *key: str) -> None:
        """Record one event (a failed sign-in) without deciding anything."""
        if not self.enabled:
            return
        try:
            for item in self._limits(rate):
                self._limiter.hit(item, *key)
        except Exception:  # noqa: BLE001
            log.warning("rate limiter storage unavailable")

    def reset(self, rate: str, *key: str) -> None:
        """Forget `key` (a successful sign-in clears its failures)."""
        try:
            for item in self._limits(rate):
                self._limiter.clear(item, *key)
        except Exception:  # noqa: BLE001
            pass
