"""Periodic work, run by every replica's loop; each job's lock makes one replica do it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from app import keys
from app.runtime import Runtime

log = logging.getLogger("ostiary.jobs")


def _key_rotation(runtime: Runtime) -> None:
    if keys.rotate_if_due(runtime.sessions, runtime.settings, runtime.keyring):
        runtime.keys.invalidate()


JOBS: list[Callable[[Runtime], None]] = [_key_rotation]


def run_once(runtime: Runtime) -> None:
    for job in JOBS:
        try:
            job(runtime)
        except Exception:  # noqa: BLE001  (a failed job must not stop the others or the loop)
            log.exception("job %s failed", job.__name__)


async def loop(runtime: Runtime) -> None:
    interval = runtime.settings.jobs_interval
    while True:
        # Jitter spreads replicas that started together.
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        await run_in_threadpool(run_once, runtime)
