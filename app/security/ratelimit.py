"""Rate limits with the `limits` library: in memory by default, in Redis when
OSTIARY_REDIS_URL is set, so that replicas share the counters.

Rates are strings such as "100/minute" or "5/minute;20/hour" (every part must allow). Keys are
(limit name, subject): ("token-ip", "192.0.2.1"), ("login-user", "alice").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.infra import metrics

log = logging.getLogger("ostiary.ratelimit")

Refused = Callable[[str, str, int], None]  # (limit name, subject, seconds to wait)


class RateLimiter:
    def __init__(
        self,
        redis_url: str | None = None,
        *,
        enabled: bool = True,
        on_refused: Refused | None = None,
        exempt: Callable[[str], bool] = lambda address: False,
    ):
        self.enabled = enabled
        self._exempt = exempt  # OSTIARY_RATE_LIMIT_EXEMPT: addresses never counted by hit_from
        storage = storage_from_string(redis_url, socket_timeout=0.5) if redis_url else MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        self._parsed: dict[str, list[RateLimitItem]] = {}
        self._on_refused = on_refused
        # Each (limit, subject) is reported once per window by this process, not once per request:
        # a flood must not become a flood of audit rows.
        self._reported: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _limits(self, rate: str) -> list[RateLimitItem]:
        parsed = self._parsed.get(rate)
        if parsed is None:
            parsed = self._parsed[rate] = parse_many(rate)
        return parsed

    def _wait(self, item: RateLimitItem, name: str, subject: str) -> int:
        reset_at, _ = self._limiter.get_window_stats(item, name, subject)
        return max(1, math.ceil(reset_at - time.time()))

    def _refused(self, name: str, subject: str, wait: int) -> int:
        metrics.RATE_LIMITED.labels(name).inc()
        t = time.monotonic()
        with self._lock:
            if self._reported.get((name, subject), 0) > t:
                return wait
            if len(self._reported) > 10_000:
                self._reported = {k: v for k, v in self._reported.items() if v > t}
            self._reported[(name, subject)] = t + wait
        if self._on_refused is not None:
            self._on_refused(name, subject, wait)
        return wait

    def hit(self, rate: str, name: str, subject: str) -> int | None:
        """Count one request; None if allowed, else the seconds to wait."""
        if not self.enabled:
            return None
        try:
            for item in self._limits(rate):
                if not self._limiter.hit(item, name, subject):
                    return self._refused(name, subject, self._wait(item, name, subject))
        except Exception:  # noqa: BLE001 - a limiter outage must not take sign-in or /token down
            log.warning("rate limiter storage unavailable; allowing the request")
        return None

    def hit_from(self, address: str, rate: str, name: str, subject: str | None = None) -> int | None:
        """Count one request from `address` (keyed by `subject`, default the address); callers
        from the exempt networks are not counted."""
        if self._exempt(address):
            return None
        return self.hit(rate, name, subject or address)

    def blocked(self, rate: str, name: str, subject: str) -> int | None:
        """Without counting: the seconds to wait if the subject is already over `rate`."""
        if not self.enabled:
            return None
        try:
            for item in self._limits(rate):
                if not self._limiter.test(item, name, subject):
                    return self._refused(name, subject, self._wait(item, name, subject))
        except Exception:  # noqa: BLE001
            log.warning("rate limiter storage unavailable; allowing the request")
        return None

    def count(self, rate: str, name: str, subject: str) -> None:
        """Record one event (a failed sign-in) without deciding anything."""
        if not self.enabled:
            return
        try:
            for item in self._limits(rate):
                self._limiter.hit(item, name, subject)
        except Exception:  # noqa: BLE001
            log.warning("rate limiter storage unavailable")

    def reset(self, rate: str, name: str, subject: str) -> None:
        """Forget a subject (a successful sign-in clears its failures)."""
        try:
            for item in self._limits(rate):
                self._limiter.clear(item, name, subject)
        except Exception:  # noqa: BLE001 - forgetting failures is best effort
            log.warning("rate limiter storage unavailable; failures not reset")
