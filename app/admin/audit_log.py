"""/admin/audit: the audit log, newest first, filtered by event, user, client, grant and time
range; security events highlighted (or alone); the same rows as CSV at /admin/audit.csv.

Rows name the people and apps they are about (usernames, client names), show their details as
text (never Python reprs), and give their time as a `<time datetime>` that a small script
(static/admin-time.js) shows in the viewer's time zone; without it, UTC."""

from __future__ import annotations

import calendar
import csv
import io
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.admin.pages import AdminDep, Pager, page_number
from app.http.deps import DbDep
from app.models import AuditEvent
from app.stores import audit as store
from app.stores import clients as clients_store
from app.stores import users as users_store

router = APIRouter()

# Events an operator should not miss: a refresh token used twice (RFC 9700 §4.14.2), a code
# redeemed twice (RFC 6749 §4.1.2), an account or a source locked out.
SECURITY_EVENTS = ("token.reuse_detected", "code.replayed", "user.locked", "rate_limit.hit", "client.host_refused")
CSV_LIMIT = 100_000  # rows in one export; narrow the filters for more


def _day(value: str, end: bool = False) -> int | None:
    """A YYYY-MM-DD date (UTC) as epoch seconds: its start, or the start of the next day."""
    try:
        start = calendar.timegm(time.strptime(value, "%Y-%m-%d"))
    except ValueError:
        return None
    return start + 86400 if end else start


# Tokens by how they were obtained (the audit rows' grant_type).
GRANTS = {
    "authorization_code": "authorization_code",
    "refresh_token": "refresh_token",
    "client_credentials": "client_credentials",
    "id-jag": "urn:ietf:params:oauth:grant-type:jwt-bearer",
}


def readable(value: Any) -> str:
    """A detail's value as an operator reads it: lists joined, mappings as `key: value`, yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(readable(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {readable(v)}" for k, v in value.items()) or "none"
    return str(value)


@dataclass(frozen=True)
class Row:
    event: AuditEvent
    iso: str  # 2026-01-31T14:05:09Z, for <time datetime> and CSV
    utc: str  # 2026-01-31 14:05 UTC, what the page shows without its script
    who: str | None  # the user it is about
    actor: str | None  # the admin who acted
    client_name: str | None
    details: list[tuple[str, str]]
    security: bool


def _rows(db: Session, events: list[AuditEvent]) -> list[Row]:
    """The page's rows: usernames for events that carry only an id, client names, readable details."""
    user_ids = {e.actor_id for e in events if e.actor_id} | {e.user_id for e in events if e.user_id and not e.username}
    users = users_store.names(db, sorted(user_ids))
    clients = clients_store.names(db, sorted({e.client_id for e in events if e.client_id}))
    return [
        Row(
            event=e,
            iso=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.at)),
            utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(e.at)),
            who=e.username or (users.get(e.user_id, e.user_id) if e.user_id else None),
            actor=users.get(e.actor_id, e.actor_id) if e.actor_id else None,
            client_name=clients.get(e.client_id) if e.client_id else None,
            details=[(k, readable(v)) for k, v in (e.details or {}).items() if v is not None],
            security=e.event in SECURITY_EVENTS,
        )
        for e in events
    ]


def _filters(
    db: Session, event: str, user: str, client: str, since: str, until: str, grant: str, security: str
) -> tuple[store.Filter, dict[str, str]]:
    """The store's filter and the query parameters that say it (for links and the CSV export)."""
    event, user, client = event.strip()[:64], user.strip()[:150], client.strip()[:2048]
    since, until = since.strip()[:10], until.strip()[:10]
    found = users_store.by_username(db, user) or users_store.get(db, user[:36]) if user else None
    where = store.Filter(
        event=event or None,
        events=SECURITY_EVENTS if security == "1" else None,
        user_id=found.id if found else None,
        username=users_store.normalize_username(user) if user and not found else None,
        client_id=client or None,
        since=_day(since) if since else None,
        until=_day(until, end=True) if until else None,
        grant_type=GRANTS.get(grant),
    )
    params = {
        "event": event,
        "user": user,
        "client": client,
        "since": since,
        "until": until,
        "grant": grant if grant in GRANTS else "",
        "security": "1" if security == "1" else "",
    }
    return where, params


@router.get("/admin/audit")
def audit_page(
    browser: AdminDep,
    db: DbDep,
    event: str = "",
    user: str = "",
    client: str = "",
    since: str = "",
    until: str = "",
    grant: str = "",
    security: str = "",
    page: str | None = None,
) -> Response:
    where, params = _filters(db, event, user, client, since, until, grant, security)
    pager = Pager(page_number(page), store.count(db, where), params)
    events = store.search(db, where, limit=pager.per_page, offset=pager.offset)
    return browser.render(
        "admin/audit.html",
        section="audit",
        rows=_rows(db, events),
        pager=pager,
        filters=params,
        csv_query=urlencode({k: v for k, v in params.items() if v}),
        event_names=store.event_names(db),
        grants=GRANTS,
        security_events=SECURITY_EVENTS,
    )


CSV_COLUMNS = [
    "time",
    "event",
    "security",
    "user_id",
    "username",
    "actor_id",
    "actor",
    "client_id",
    "client_name",
    "resource",
    "ip",
    "request_id",
    "details",
]


def _cell(value: str) -> str:
    """A spreadsheet must not run what a client put in a field (OWASP "CSV injection")."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@router.get("/admin/audit.csv")
def audit_csv(
    browser: AdminDep,
    db: DbDep,
    event: str = "",
    user: str = "",
    client: str = "",
    since: str = "",
    until: str = "",
    grant: str = "",
    security: str = "",
) -> Response:
    """The rows the page's filters select, every page of them (at most CSV_LIMIT), newest first;
    times in UTC (ISO 8601), details as JSON."""
    where, _ = _filters(db, event, user, client, since, until, grant, security)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for offset in range(0, CSV_LIMIT, 1000):
        batch = store.search(db, where, limit=1000, offset=offset)
        for row in _rows(db, batch):
            e = row.event
            values = [
                row.iso,
                e.event,
                "yes" if row.security else "",
                e.user_id or "",
                row.who or "",
                e.actor_id or "",
                row.actor or "",
                e.client_id or "",
                row.client_name or "",
                e.resource or "",
                e.ip or "",
                e.request_id or "",
                json.dumps(e.details or {}, sort_keys=True, separators=(",", ":")),
            ]
            writer.writerow([_cell(v) for v in values])
        if len(batch) < 1000:
            break
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return browser.apply_cookies(
        Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="ostiary-audit-{stamp}.csv"',
                "Cache-Control": "no-store",
            },
        )
    )
