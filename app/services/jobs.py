"""Periodic work, run by every replica's loop; each job's lock makes one replica do it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from app.infra.db import transaction
from app.services import cleanup, clients, keys
from app.stores import jobs as job_locks

log = logging.getLogger("ostiary.jobs")

if TYPE_CHECKING:
    from app.runtime import Runtime


def _key_rotation(runtime: Runtime) -> None:
    if keys.rotate_if_due(runtime.sessions, runtime.settings, runtime.keyring):
        runtime.keys.invalidate()


def _prune_clients(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as db:
        if not job_locks.claim(db, "prune-clients", interval=3600):
            return  # another replica ran it within the hour
        pruned = clients.prune(db, runtime.settings)
    if pruned:
        log.info("pruned %d unused dynamically registered clients", len(pruned))


def _cleanup(runtime: Runtime) -> None:
    cleanup.run_if_due(runtime.sessions, runtime.settings)


JOBS: list[Callable[[Runtime], None]] = [_key_rotation, _prune_clients, _cleanup]


def run_once(runtime: Runtime) -> None:
    for job in JOBS:
        try:
            job(runtime)
        except Exception:
            log.exception("job %s failed", job.__name__)


async def loop(runtime: Runtime) -> None:
    interval = runtime.settings.jobs_interval
    while True:
        # Jitter spreads replicas that started together.
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        await run_in_threadpool(run_once, runtime)
