"""Security events: one row in `audit_events` and one JSON log line each.

Callers pass identifiers only (user, client, resource, kid, jti); never a token, code, secret or
password. The request's IP and id come from the request context set by the middleware.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.infra import metrics
from app.infra.db import transaction
from app.stores import audit as store

log = logging.getLogger("ostiary.audit")


@dataclass(frozen=True)
class RequestContext:
    ip: str | None = None
    request_id: str | None = None


request_context: ContextVar[RequestContext] = ContextVar("request_context", default=RequestContext())


def record(
    db: Session,
    event: str,
    *,
    user_id: str | None = None,
    username: str | None = None,
    actor_id: str | None = None,
    client_id: str | None = None,
    resource: str | None = None,
    **details: Any,
) -> None:
    ctx = request_context.get()
    store.add(
        db,
        event=event,
        user_id=user_id,
        username=username,
        actor_id=actor_id,
        client_id=client_id,
        resource=resource,
        ip=ctx.ip,
        request_id=ctx.request_id,
        details=details,
    )
    metrics.observe_event(event)
    line = {
        "event": event,
        "user_id": user_id,
        "username": username,
        "actor_id": actor_id,
        "client_id": client_id,
        "resource": resource,
        "ip": ctx.ip,
        "request_id": ctx.request_id,
        **details,
    }
    log.info(event, extra={"fields": {k: v for k, v in line.items() if v is not None}})


def record_now(factory: sessionmaker[Session], event: str, **fields: Any) -> None:
    """Record an event in a transaction of its own (for refusals that open no session)."""
    try:
        with transaction(factory) as db:
            record(db, event, **fields)
    except Exception:
        log.warning("could not record %s", event, exc_info=True)
