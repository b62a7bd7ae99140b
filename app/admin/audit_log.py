"""/admin/audit: the audit log, newest first, filtered by event, user, client and time range."""

from __future__ import annotations

import calendar
import time

from fastapi import APIRouter, Response

from app.admin.pages import AdminDep, Pager, page_number
from app.http.deps import DbDep
from app.stores import audit as store
from app.stores import users as users_store

router = APIRouter()


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
    page: str | None = None,
) -> Response:
    event, user, client = event.strip()[:64], user.strip()[:150], client.strip()[:2048]
    since, until = since.strip()[:10], until.strip()[:10]
    found = users_store.by_username(db, user) or users_store.get(db, user[:36]) if user else None
    where = store.Filter(
        event=event or None,
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
    }
    pager = Pager(page_number(page), store.count(db, where), params)
    events = store.search(db, where, limit=pager.per_page, offset=pager.offset)
    # Who: events that carry only ids (token.issued, code.issued ...) show the username too.
    actors: dict[str, str] = {}
    for user_id in {e.actor_id for e in events if e.actor_id} | {e.user_id for e in events if e.user_id and not e.username}:
        row = users_store.get(db, user_id)
        actors[user_id] = row.username if row else user_id
    return browser.render(
        "admin/audit.html",
        section="audit",
        events=events,
        actors=actors,
        pager=pager,
        filters=params,
        event_names=store.event_names(db),
        grants=GRANTS,
    )
