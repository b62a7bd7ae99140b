"""Expired-data cleanup: what may be deleted when, so that no table grows without bound.

Run by the periodic job loop (one replica at a time, under the job's lock) and by tests.
Every step deletes in batches of BATCH rows, each batch in its own short transaction, and stops
after MAX_BATCHES or STEP_SECONDS per run: a backlog drains over several runs without long locks.
The bounds are sized to keep up with rotation: every refresh leaves a used token (kept until it
expires, for reuse detection) and a sealed successor, so a run must be able to delete what five
minutes of refreshes at full speed create (docs/decisions.md#expired-data-is-deleted-in-bounded-batches).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.infra.db import now, transaction
from app.settings import Settings
from app.stores import cleanup as store
from app.stores import jobs as job_locks

log = logging.getLogger("ostiary.cleanup")

BATCH = 1000
MAX_BATCHES = 1000
STEP_SECONDS = 20.0  # per table and run
EVERY = 300  # seconds between runs, across all replicas
DAY = 24 * 3600
# A consumed code is kept a day past its expiry: a replay within that day is still recognised
# and still revokes what the code issued (OAuth 2.1 §4.1.3).
CODE_REPLAY_MEMORY = DAY
# Revoked refresh tokens are kept a day for the admin's view; a use of one fails either way.
REVOKED_TOKEN_MEMORY = DAY


def steps(settings: Settings, t: int) -> list[tuple[str, Callable[[Session, int], int]]]:
    return [
        ("authorization_requests", lambda db, n: store.expired_requests(db, t, n)),
        ("authorization_codes", lambda db, n: store.expired_codes(db, t - CODE_REPLAY_MEMORY, n)),
        ("browser_sessions", lambda db, n: store.expired_sessions(db, t, t - settings.session_idle_timeout, n)),
        # The successor is kept encrypted on its parent until the grace window closes
        # (docs/decisions.md#a-retry-within-the-grace-window-gets-the-same-successor).
        ("refresh_successors", lambda db, n: store.sealed_successors(db, t - settings.refresh_grace_period, n)),
        ("refresh_tokens", lambda db, n: store.expired_refresh_tokens(db, t, t - REVOKED_TOKEN_MEMORY, n)),
        ("revoked_access_tokens", lambda db, n: store.expired_revoked_access_tokens(db, t, n)),
        # A client assertion's jti is remembered until the assertion expires (RFC 7523 §3).
        ("used_assertions", lambda db, n: store.expired_assertions(db, t - 60, n)),
        ("initial_access_tokens", lambda db, n: store.spent_initial_tokens(db, t, n)),
        ("password_setup_tokens", lambda db, n: store.expired_password_links(db, t, n)),
        ("audit_events", lambda db, n: store.old_audit_events(db, t - settings.audit_retention_days * DAY, n)),
    ]


def run(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    batch: int = BATCH,
    max_batches: int = MAX_BATCHES,
    step_seconds: float = STEP_SECONDS,
) -> dict[str, int]:
    """One pass over every table; returns the rows touched per table."""
    done: dict[str, int] = {}
    for name, step in steps(settings, now()):
        total = 0
        deadline = time.monotonic() + step_seconds
        for _ in range(max_batches):
            with transaction(factory) as db:
                count = step(db, batch)
            total += count
            if count < batch or time.monotonic() > deadline:
                break
        if total:
            done[name] = total
    return done


def run_if_due(factory: sessionmaker[Session], settings: Settings) -> dict[str, int] | None:
    """Run unless another replica did within EVERY seconds."""
    with transaction(factory) as db:
        if not job_locks.claim(db, "cleanup", interval=EVERY):
            return None
    done = run(factory, settings)
    if done:
        log.info("cleanup", extra={"fields": {"event": "cleanup.done", **done}})
    return done
