"""FastAPI dependency aliases: `DbDep`, `RuntimeDep`.

They are `async def` on purpose: FastAPI runs a sync dependency in the thread pool, and a sync
generator dependency costs two hops (enter and exit), which on the token endpoint cost more
than the route's own SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_db(request: Request) -> AsyncIterator[Session]:
    """A sync session per request; routes commit what they change. Making one does no I/O;
    closing one does only while a transaction is open (its rollback), and then runs in the
    thread pool, shielded so a dropped connection cannot leak it."""
    session = request.app.state.runtime.sessions()
    try:
        yield session
    finally:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(session.close)
        else:
            session.close()


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
DbDep = Annotated[Session, Depends(get_db)]
