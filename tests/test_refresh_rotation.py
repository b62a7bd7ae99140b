"""Refresh tokens (RFC 6749 6, OAuth 2.1 4.3.1, RFC 9700 4.14.2): rotated on every use; a retry
within the grace window gets the *same* successor; any other reuse revokes the family and is
audited; scope may narrow but never widen; and all of it holds under real concurrency on
PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import select, text

from app.models import RefreshToken
from tests.support import (
    UvicornServer,
    admin_client,
    audit_events,
    introspect,
    login,
    refresh,
    register,
    signed_in_flow,
    tokens_for,
    verify_jwt,
)

pytestmark = pytest.mark.anyio


def refresh_rows(runtime) -> list[RefreshToken]:
    with runtime.sessions() as db:
        return list(db.scalars(select(RefreshToken).order_by(RefreshToken.id)))


def age_used_tokens(runtime, seconds: int) -> None:
    """Move the moment refresh tokens were used into the past (past the grace window)."""
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE refresh_tokens SET used_at = used_at - :s WHERE used_at IS NOT NULL"), {"s": seconds})


async def test_every_refresh_rotates(client, runtime):
    """OAuth 2.1 4.3.1 / RFC 9700 4.14.2: a new refresh token on every use; the old one is
    retired (introspection: inactive)."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    first = await tokens_for(client, reg["client_id"])
    second = (await refresh(client, reg["client_id"], first["refresh_token"])).json()
    third = (await refresh(client, reg["client_id"], second["refresh_token"])).json()
    assert len({first["refresh_token"], second["refresh_token"], third["refresh_token"]}) == 3
    assert len({first["access_token"], second["access_token"], third["access_token"]}) == 3
    assert (await introspect(client, first["refresh_token"], rs)).json() == {"active": False}
    assert (await introspect(client, third["refresh_token"], rs)).json()["active"] is True
    rows = refresh_rows(runtime)
    assert len(rows) == 3 and len({r.family_id for r in rows}) == 1
    assert [r.parent_id for r in rows] == [None, rows[0].id, rows[1].id]
    assert rows[0].used_at and rows[1].used_at and rows[2].used_at is None


async def test_retry_within_grace_window_gets_the_same_successor(client, runtime):
    """docs/decisions.md#a-retry-within-the-grace-window-gets-the-same-successor: a retry (lost
    response) within the grace window returns the SAME successor, never a sibling."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"])
    a = await refresh(client, reg["client_id"], first["refresh_token"])
    b = await refresh(client, reg["client_id"], first["refresh_token"])
    assert a.status_code == b.status_code == 200, b.text
    assert b.json()["refresh_token"] == a.json()["refresh_token"]
    assert b.json()["access_token"] == a.json()["access_token"]
    assert b.headers["cache-control"] == "no-store"
    rows = refresh_rows(runtime)
    assert len(rows) == 2  # one successor, no sibling
    # the successor works
    assert (await refresh(client, reg["client_id"], a.json()["refresh_token"])).status_code == 200


async def test_retry_after_the_successor_was_used_is_reuse(client, runtime):
    """Once the successor is used, any use of its parent is reuse: invalid_grant and the whole
    family is revoked, the newest token too
    (docs/decisions.md#a-retry-within-the-grace-window-gets-the-same-successor)."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"])
    second = (await refresh(client, reg["client_id"], first["refresh_token"])).json()
    third = (await refresh(client, reg["client_id"], second["refresh_token"])).json()
    reuse = await refresh(client, reg["client_id"], first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    newest = await refresh(client, reg["client_id"], third["refresh_token"])
    assert newest.status_code == 400 and newest.json()["error"] == "invalid_grant"
    assert all(r.revoked_at is not None for r in refresh_rows(runtime))
    assert len(audit_events(runtime, "token.reuse_detected")) == 1


@pytest.mark.parametrize(
    "settings_overrides, shift",
    [
        pytest.param({}, 31, id="default 30 s window, used 31 s ago"),
        pytest.param({"refresh_grace_period": 0}, 1, id="no grace window"),
        pytest.param({"refresh_grace_period": 5}, 6, id="5 s window, used 6 s ago"),
    ],
)
async def test_reuse_after_the_grace_window_revokes_the_family(client, runtime, settings_overrides, shift):
    """OAuth 2.1 4.3.1 / RFC 9700 4.14.2: reuse of a rotated refresh token revokes the family
    (successor and its access token too) and is audited (token.reuse_detected)."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    first = await tokens_for(client, reg["client_id"])
    second = (await refresh(client, reg["client_id"], first["refresh_token"])).json()
    age_used_tokens(runtime, shift)
    reuse = await refresh(client, reg["client_id"], first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    successor = await refresh(client, reg["client_id"], second["refresh_token"])
    assert successor.status_code == 400 and successor.json()["error"] == "invalid_grant"
    assert (await introspect(client, second["access_token"], rs)).json() == {"active": False}
    [event] = audit_events(runtime, "token.reuse_detected")
    assert event.client_id == reg["client_id"]
    assert first["refresh_token"] not in repr(event.details)


async def test_reuse_revokes_every_refresh_token_of_the_grant_and_nothing_else(client, runtime):
    """docs/decisions.md#refresh-token-reuse-revokes-the-whole-consent: a reuse revokes every
    refresh token of that grant (user x client x resource), not only its family: here a second
    login's family too; another client's grant is untouched."""
    reg = await signed_in_flow(client, runtime)
    other_client = await register(client)
    first = await tokens_for(client, reg["client_id"])
    same_grant = await tokens_for(client, reg["client_id"])
    elsewhere = await tokens_for(client, other_client["client_id"])
    await refresh(client, reg["client_id"], first["refresh_token"])
    age_used_tokens(runtime, 31)
    assert (await refresh(client, reg["client_id"], first["refresh_token"])).status_code == 400
    revoked = await refresh(client, reg["client_id"], same_grant["refresh_token"])
    assert revoked.status_code == 400 and revoked.json()["error"] == "invalid_grant"
    assert (await refresh(client, other_client["client_id"], elsewhere["refresh_token"])).status_code == 200


# -- scope (RFC 6749 6) ------------------------------------------------------------------------------


async def test_narrower_scope_and_successor_keeps_the_original(client, runtime):
    """RFC 6749 6: a narrower scope is allowed; the new refresh token keeps the original scope."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"], scope="mcp:read mcp:write")
    narrow = (await refresh(client, reg["client_id"], first["refresh_token"], scope="mcp:read")).json()
    assert narrow["scope"] == "mcp:read"
    assert (await verify_jwt(client, narrow["access_token"])).claims["scope"] == "mcp:read"
    full = (await refresh(client, reg["client_id"], narrow["refresh_token"])).json()
    assert full["scope"] == "mcp:read mcp:write"
    assert (await verify_jwt(client, full["access_token"])).claims["scope"] == "mcp:read mcp:write"


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("mcp:read mcp:write", id="adds a granted-elsewhere scope"),
        pytest.param("mcp:write", id="a different scope"),
        pytest.param("unknown", id="an unknown scope"),
        pytest.param('mcp:"read"', id="invalid characters"),
    ],
)
async def test_wider_scope_is_invalid_scope(client, runtime, scope):
    """RFC 6749 6: "MUST NOT include any scope not originally granted"; the refused request does
    not consume the refresh token."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"], scope="mcp:read")
    response = await refresh(client, reg["client_id"], first["refresh_token"], scope=scope)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_scope"
    assert (await refresh(client, reg["client_id"], first["refresh_token"])).status_code == 200


# -- who may refresh --------------------------------------------------------------------------------


async def test_disabled_user_cannot_refresh(client, runtime):
    """RFC 6749 6: a disabled account's refresh tokens stop working
    (docs/decisions.md#refresh-tokens-expire-after-30-days-unused)."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"])
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE users SET disabled_at = 1"))
    response = await refresh(client, reg["client_id"], first["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert "refresh_token" not in response.json()


async def test_refresh_token_is_bound_to_its_client(client, runtime):
    """RFC 6749 6 / 10.4: the refresh token is bound to the client it was issued to."""
    reg = await signed_in_flow(client, runtime)
    other = await register(client, client_name="Other")
    first = await tokens_for(client, reg["client_id"])
    response = await refresh(client, other["client_id"], first["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert (await refresh(client, reg["client_id"], first["refresh_token"])).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("ostrt_" + "A" * 43, id="unknown"),
        pytest.param("EXPIRED", id="expired"),
        pytest.param("REVOKED", id="revoked (RFC 7009)"),
    ],
)
async def test_invalid_refresh_tokens(client, runtime, token):
    """RFC 6749 5.2 / 6: an unknown, expired or revoked refresh token is invalid_grant."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"])
    if token == "EXPIRED":
        with runtime.engine.begin() as conn:
            conn.execute(text("UPDATE refresh_tokens SET expires_at = 1"))
        token = first["refresh_token"]
    elif token == "REVOKED":
        await client.post("/revoke", data={"token": first["refresh_token"], "client_id": reg["client_id"]})
        token = first["refresh_token"]
    response = await refresh(client, reg["client_id"], token)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


async def test_missing_refresh_token_is_invalid_request(client, runtime):
    """RFC 6749 6: refresh_token is REQUIRED."""
    reg = await signed_in_flow(client, runtime)
    response = await refresh(client, reg["client_id"], None)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


async def test_refresh_requires_the_client_to_be_allowed_the_grant(client, runtime):
    """RFC 6749 5.2: a refresh token only when the client may use the grant
    (docs/decisions.md#refresh-tokens-are-issued-without-asking-for-offline-access)."""
    reg = await signed_in_flow(client, runtime, grant_types=["authorization_code"])
    body = await tokens_for(client, reg["client_id"])
    assert "refresh_token" not in body


# -- concurrency, on SQLite and PostgreSQL, through uvicorn ------------------------------------------


async def test_fifty_parallel_refreshes_yield_one_successor(client, runtime, settings):
    """docs/decisions.md#one-time-values-are-consumed-with-one-conditional-update: 50 parallel
    refreshes of one token (PostgreSQL: row locks; SQLite: one writer at a time): exactly one
    successor (one child row), no 5xx, and every 200 carries the same refresh token."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"])
    data = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": reg["client_id"]}
    with UvicornServer(settings) as base_url:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        # The issuer's Host, as a load balancer in front of this replica would send it.
        host = {"Host": settings.issuer.split("://", 1)[1]}
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30, headers=host) as http:
            responses = await asyncio.gather(*(http.post("/token", data=data) for _ in range(50)))
    statuses = [r.status_code for r in responses]
    assert not [s for s in statuses if s >= 500], statuses
    ok = [r.json()["refresh_token"] for r in responses if r.status_code == 200]
    assert ok, statuses
    assert len(set(ok)) == 1, "siblings were issued"
    rows = refresh_rows(runtime)
    parent = next(r for r in rows if r.parent_id is None)
    children = [r for r in rows if r.parent_id == parent.id]
    assert len(children) == 1
    assert len(rows) == 2
    # no false reuse detection: every request was a retry inside the grace window
    assert statuses == [200] * 50, statuses
    assert children[0].revoked_at is None
    assert (await refresh(client, reg["client_id"], ok[0])).status_code == 200


async def test_sixteen_clients_refreshing_at_once_all_rotate(client, new_client, runtime, settings):
    """The hot path under load (docs/decisions.md#sqlite-writers-queue-in-the-process): 16 chains
    refreshed side by side, 8 rotations each, through uvicorn. Every request is a 200 (SQLite's
    single writer queues them: no `database is locked` 503), every chain stays one family with one
    live token, and no
    rotation is mistaken for reuse."""
    chains = []
    for _ in range(16):
        browser = new_client()
        reg = await signed_in_flow(browser, runtime) if not chains else await register(browser)
        if chains:
            await login(browser)
        chains.append((reg["client_id"], (await tokens_for(browser, reg["client_id"]))["refresh_token"]))
    host = {"Host": settings.issuer.split("://", 1)[1]}
    statuses: list[int] = []

    async def rotate(http, client_id: str, token: str) -> None:
        for _ in range(8):
            r = await http.post("/token", data={"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id})
            statuses.append(r.status_code)
            if r.status_code != 200:
                return
            token = r.json()["refresh_token"]

    with UvicornServer(settings) as base_url:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30, headers=host) as http:
            await asyncio.gather(*(rotate(http, cid, rt) for cid, rt in chains))
    assert statuses == [200] * 16 * 8, statuses
    rows = refresh_rows(runtime)
    assert len(rows) == 16 * 9 and len({r.family_id for r in rows}) == 16
    live = [r for r in rows if r.used_at is None and r.revoked_at is None]
    assert len(live) == 16 and len({r.family_id for r in live}) == 16
    assert audit_events(runtime, "token.reuse_detected") == []
