"""Prometheus metrics (served at /metrics to the networks in OSTIARY_METRICS_NETWORKS)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

REQUESTS = Counter("ostiary_http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "ostiary_http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS = Counter("ostiary_security_events_total", "Security events (audit events by name)", ["event"])
TOKENS_ISSUED = Counter("ostiary_tokens_issued_total", "Access tokens issued", ["grant_type"])
REFRESH_REUSE = Counter("ostiary_refresh_token_reuse_total", "Refresh token reuse detected (family revoked)")
SIGNIN_FAILURES = Counter("ostiary_signin_failures_total", "Failed sign-ins (password or second factor)")
RATE_LIMITED = Counter("ostiary_rate_limited_total", "Requests refused by a rate limit", ["limit"])
ACTIVE_KEY_AGE = Gauge("ostiary_active_signing_key_age_seconds", "Age of the active signing key")

_FROM_EVENT: dict[str, Callable[[], None]] = {
    "token.issued": lambda: TOKENS_ISSUED.labels("authorization_code").inc(),
    "token.refreshed": lambda: TOKENS_ISSUED.labels("refresh_token").inc(),
    "token.reuse_detected": REFRESH_REUSE.inc,
    "login.failed": SIGNIN_FAILURES.inc,
    "login.mfa_failed": SIGNIN_FAILURES.inc,
}


def observe_event(event: str) -> None:
    EVENTS.labels(event).inc()
    extra = _FROM_EVENT.get(event)
    if extra is not None:
        extra()


def render(activated_at: int | None) -> tuple[bytes, str]:
    if activated_at:
        ACTIVE_KEY_AGE.set(max(0, time.time() - activated_at))
    return generate_latest(), CONTENT_TYPE_LATEST


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    LATENCY.labels(route, method).observe(seconds)
