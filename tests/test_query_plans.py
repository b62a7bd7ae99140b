"""Every statement on a hot path reads the big tables through an index, so that a token request
costs the same at a million refresh tokens as at ten (the scale requirement of the performance
work; README "Performance").

The statements are not listed by hand: the real flows run over HTTP (registration, sign-in, a
returning user's /authorize, the code exchange, refresh, a retry inside the grace window,
introspection, revocation) and the cleanup job, every statement they send is recorded with its
parameters, and each is explained by the database itself: SQLite's EXPLAIN QUERY PLAN, and on
PostgreSQL EXPLAIN with sequential scans priced out (`enable_seqscan = off`), so that the plan
shows a Seq Scan only where no index can serve the query at all.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import event

from app.services import cleanup
from tests.support import admin_client, introspect, refresh, signed_in_flow, tokens_for

pytestmark = pytest.mark.anyio

# Tables that grow with use. Small ones (resources and their scopes, signing keys, job runs, host
# rules, identity providers) may be scanned: a scan of ten rows is the best plan.
BIG_TABLES = {
    "refresh_tokens",
    "authorization_codes",
    "authorization_requests",
    "clients",
    "grants",
    "users",
    "browser_sessions",
    "audit_events",
    "revoked_access_tokens",
    "used_assertions",
    "password_setup_tokens",
    "user_identities",
}


def _record(runtime) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if not executemany and statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE"):
            seen.append((statement, parameters))

    event.listen(runtime.engine, "before_cursor_execute", before)
    return seen


def _sqlite_scans(cursor, statement: str, parameters: Any) -> list[str]:
    cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
    details = [row[3] for row in cursor.fetchall()]
    scans = []
    for detail in details:
        words = detail.split()
        # "SCAN t" reads the whole table; "SCAN t USING (COVERING) INDEX" is an index scan;
        # "SEARCH t USING ..." is a lookup.
        if words[:1] == ["SCAN"] and len(words) > 1 and words[1] in BIG_TABLES and "INDEX" not in words:
            scans.append(detail)
    return scans


def _postgres_scans(cursor, statement: str, parameters: Any) -> list[str]:
    cursor.execute("SET enable_seqscan = off")
    cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
    plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    scans = []

    def walk(node: dict) -> None:
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in BIG_TABLES:
            scans.append(f"Seq Scan on {node['Relation Name']} ({node.get('Filter', '')})")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return scans


def _full_scans(runtime, statements: list[tuple[str, Any]]) -> dict[str, list[str]]:
    postgres = runtime.engine.dialect.name == "postgresql"
    found: dict[str, list[str]] = {}
    raw = runtime.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in {s: (s, p) for s, p in statements}.values():
            scans = (_postgres_scans if postgres else _sqlite_scans)(cursor, statement, parameters)
            if scans:
                found[" ".join(statement.split())[:200]] = scans
        raw.rollback()
    finally:
        raw.close()
    return found


async def test_hot_path_statements_use_an_index(client, runtime, settings):
    """Registration, sign-in, a returning user's authorization, the code exchange, rotation, a
    retry inside the grace window (OAuth 2.1 §4.3.1), introspection (RFC 7662), revocation
    (RFC 7009) and the cleanup job: no statement reads a growing table from end to end."""
    statements = _record(runtime)
    reg = await signed_in_flow(client, runtime)  # registration (RFC 7591) and sign-in
    rs = admin_client(runtime)
    first = await tokens_for(client, reg["client_id"])  # /authorize + code exchange
    second = await refresh(client, reg["client_id"], first["refresh_token"])
    retry = await refresh(client, reg["client_id"], first["refresh_token"])  # grace-window retry
    assert second.status_code == retry.status_code == 200
    assert (await introspect(client, second.json()["access_token"], rs)).json()["active"] is True
    revoked = await client.post("/revoke", data={"token": second.json()["refresh_token"], "client_id": reg["client_id"]})
    assert revoked.status_code == 200
    cleanup.run(runtime.sessions, settings)
    assert len(statements) > 20, statements  # the recording saw the flows
    # ... including the statements that run on the driver (they reach the engine's listeners too).
    recorded = " ".join(" ".join(s.split()) for s, _ in statements)
    assert "FROM refresh_tokens JOIN users" in recorded and "UPDATE refresh_tokens SET used_at" in recorded
    assert "FROM authorization_codes JOIN users" in recorded and "UPDATE authorization_codes SET access_jti" in recorded

    assert _full_scans(runtime, statements) == {}


async def test_a_full_scan_is_recognised(client, runtime):
    """The check itself: a query on a column without an index is reported."""
    await signed_in_flow(client, runtime)
    no_parameters = None if runtime.engine.dialect.name == "postgresql" else ()
    found = _full_scans(runtime, [("SELECT id FROM audit_events WHERE details IS NOT NULL", no_parameters)])
    assert list(found.values()) and "audit_events" in next(iter(found.values()))[0]
