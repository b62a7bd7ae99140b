"""Periodic work, run by every replica's loop; each job's lock makes one replica do it
(docs/decisions.md#scheduled-jobs-run-on-one-replica-at-a-time)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.infra.db import transaction
from app.security.secrets import Keyring
from app.services import cleanup, clients, keys
from app.services.keys import KeyCache
from app.settings import Settings
from app.stores import jobs as job_locks

log = logging.getLogger("ostiary.jobs")


@dataclass(frozen=True)
class Jobs:
    """What the periodic jobs need."""

    sessions: sessionmaker[Session]
    settings: Settings
    keyring: Keyring
    keys: KeyCache


def _key_rotation(jobs: Jobs) -> None:
    if keys.rotate_if_due(jobs.sessions, jobs.settings, jobs.keyring):
        jobs.keys.invalidate()


def _prune_clients(jobs: Jobs) -> None:
    with transaction(jobs.sessions) as db:
        if not job_locks.claim(db, "prune-clients", interval=3600):
            return  # another replica ran it within the hour
        pruned = clients.prune(db, jobs.settings)
    if pruned:
        log.info("pruned %d unused dynamically registered clients", len(pruned))


def _cleanup(jobs: Jobs) -> None:
    cleanup.run_if_due(jobs.sessions, jobs.settings)


JOBS: list[Callable[[Jobs], None]] = [_key_rotation, _prune_clients, _cleanup]


def run_once(jobs: Jobs) -> None:
    for job in JOBS:
        try:
            job(jobs)
        except Exception:
            log.exception("job %s failed", job.__name__)  # a failed job must not stop the others


async def loop(jobs: Jobs) -> None:
    interval = jobs.settings.jobs_interval
    while True:
        # Jitter spreads replicas that started together.
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        await run_in_threadpool(run_once, jobs)
