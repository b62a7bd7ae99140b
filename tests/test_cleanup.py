"""Expired-data cleanup (docs/decisions.md#expired-data-is-deleted-in-bounded-batches): codes,
authorization requests, sessions, spent refresh tokens, revoked-token records and old audit rows
are deleted by a periodic job in bounded batches; nothing that is still needed (a live token, a
used token that reuse detection needs, a successor inside its grace window) is touched."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text, update

from app.infra.db import now
from app.models import (
    AuditEvent,
    AuthorizationCode,
    AuthorizationRequest,
    BrowserSession,
    RefreshToken,
    RevokedAccessToken,
)
from app.services import cleanup
from tests.support import (
    admin_client,
    authorize_params,
    introspect,
    obtain_code,
    pkce,
    refresh,
    signed_in_flow,
    tokens_for,
)

pytestmark = pytest.mark.anyio


def count(runtime, model, *where) -> int:
    with runtime.sessions() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where)) or 0


def shift(runtime, model, **columns_back: int) -> None:
    """Move timestamps of every row of `model` into the past by the given seconds."""
    with runtime.sessions() as db:
        db.execute(update(model).values({c: getattr(model, c) - s for c, s in columns_back.items()}))
        db.commit()


def run(runtime, **kwargs) -> dict[str, int]:
    return cleanup.run(runtime.sessions, runtime.settings, **kwargs)


async def test_expired_codes_requests_and_sessions_go_live_ones_stay(client, new_client, runtime):
    """Codes a day past expiry, expired authorization requests and sessions past their absolute
    or idle timeout are deleted; a live session keeps working."""
    reg = await signed_in_flow(client, runtime)
    await obtain_code(client, reg["client_id"])  # a code (consumed below) ...
    await tokens_for(client, reg["client_id"])
    # ... and a pending authorization request from a browser that never signed in.
    anonymous = new_client()
    _, challenge = pkce()
    assert (await anonymous.get("/authorize", params=authorize_params(reg["client_id"], challenge))).status_code == 303
    assert count(runtime, AuthorizationRequest) >= 1 and count(runtime, AuthorizationCode) == 2

    assert run(runtime) == {}  # nothing is old enough yet
    assert count(runtime, AuthorizationCode) == 2

    shift(runtime, AuthorizationCode, expires_at=cleanup.CODE_REPLAY_MEMORY + 120)
    shift(runtime, AuthorizationRequest, expires_at=runtime.settings.authorization_request_ttl + 1)
    done = run(runtime)
    assert done["authorization_codes"] == 2 and done["authorization_requests"] >= 1
    assert count(runtime, AuthorizationCode) == 0 and count(runtime, AuthorizationRequest) == 0
    assert (await client.get("/account")).status_code == 200  # the live session is untouched

    shift(runtime, BrowserSession, last_seen_at=runtime.settings.session_idle_timeout + 5)
    assert run(runtime)["browser_sessions"] == 1
    assert count(runtime, BrowserSession) == 0
    assert (await client.get("/account")).status_code in (303, 307)  # signed out: to /login


async def test_sealed_successor_is_forgotten_after_the_grace_window_and_reuse_is_still_caught(client, runtime):
    """docs/decisions.md#a-retry-within-the-grace-window-gets-the-same-successor: the successor is
    kept encrypted on its parent only until the grace window closes. After cleanup the parent row
    stays, so its reuse still revokes the family (OAuth 2.1 §4.3.1)."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    first = await tokens_for(client, reg["client_id"])
    second = (await refresh(client, reg["client_id"], first["refresh_token"])).json()
    sealed = RefreshToken.successor_enc.is_not(None)
    assert count(runtime, RefreshToken, sealed) == 1

    assert "refresh_successors" not in run(runtime)  # inside the window: kept for a retry
    assert count(runtime, RefreshToken, sealed) == 1
    shift(runtime, RefreshToken, used_at=runtime.settings.refresh_grace_period + 1)
    assert run(runtime)["refresh_successors"] == 1
    assert count(runtime, RefreshToken, sealed) == 0
    assert count(runtime, RefreshToken) == 2  # the used parent is kept for reuse detection

    reuse = await refresh(client, reg["client_id"], first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert (await refresh(client, reg["client_id"], second["refresh_token"])).json()["error"] == "invalid_grant"
    assert (await introspect(client, second["access_token"], rs)).json() == {"active": False}


async def test_expired_and_long_revoked_refresh_tokens_and_revoked_jtis_go(client, runtime):
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    kept = await tokens_for(client, reg["client_id"])
    doomed = await tokens_for(client, reg["client_id"])
    assert (
        await client.post("/revoke", data={"token": doomed["refresh_token"], "client_id": reg["client_id"]})
    ).status_code == 200
    assert count(runtime, RevokedAccessToken) == 1

    assert "refresh_tokens" not in run(runtime)  # revoked a moment ago: kept for a day
    with runtime.sessions() as db:
        db.execute(
            update(RefreshToken)
            .where(RefreshToken.revoked_at.is_not(None))
            .values(revoked_at=RefreshToken.revoked_at - cleanup.REVOKED_TOKEN_MEMORY - 1)
        )
        db.execute(update(RevokedAccessToken).values(expires_at=now() - 1))
        db.commit()
    done = run(runtime)
    assert done["refresh_tokens"] == 1 and done["revoked_access_tokens"] == 1
    assert count(runtime, RefreshToken) == 1
    # The live token was not touched.
    assert (await refresh(client, reg["client_id"], kept["refresh_token"])).status_code == 200
    assert (await introspect(client, kept["access_token"], rs)).json()["active"] is True

    shift(runtime, RefreshToken, expires_at=runtime.settings.refresh_token_ttl + 1)
    assert run(runtime)["refresh_tokens"] == 2  # the rotated parent and its successor, expired
    assert count(runtime, RefreshToken) == 0


async def test_audit_rows_older_than_the_retention_go(client, runtime):
    await signed_in_flow(client, runtime)
    total = count(runtime, AuditEvent)
    assert total > 0
    with runtime.sessions() as db:
        oldest = db.scalar(select(func.min(AuditEvent.id)))
        db.execute(
            update(AuditEvent)
            .where(AuditEvent.id == oldest)
            .values(at=now() - runtime.settings.audit_retention_days * 86400 - 10)
        )
        db.commit()
    assert run(runtime)["audit_events"] == 1
    assert count(runtime, AuditEvent) == total - 1


async def test_deletes_in_bounded_batches_and_drains_over_runs(client, runtime):
    """Each batch deletes at most `batch` rows in its own transaction; one run stops after
    `max_batches`; the next run goes on where it stopped."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"])
    with runtime.sessions() as db:
        template = db.scalar(select(AuthorizationCode))
        t = now()
        db.execute(
            AuthorizationCode.__table__.insert(),
            [
                {
                    "code_hash": f"{i:064x}",
                    "client_id": template.client_id,
                    "user_id": template.user_id,
                    "resource_id": template.resource_id,
                    "redirect_uri": template.redirect_uri,
                    "redirect_uri_in_request": True,
                    "scope": template.scope,
                    "code_challenge": template.code_challenge,
                    "auth_time": t,
                    "family_id": f"f{i}",
                    "created_at": t - 10 * 86400,
                    "expires_at": t - 5 * 86400,
                }
                for i in range(250)
            ],
        )
        db.commit()
    assert run(runtime, batch=40, max_batches=3)["authorization_codes"] == 120
    assert count(runtime, AuthorizationCode) == 131  # 130 old ones left, and the fresh one
    assert run(runtime, batch=40, max_batches=10)["authorization_codes"] == 130
    assert count(runtime, AuthorizationCode) == 1


async def test_the_scheduled_cleanup_runs_once_per_interval_across_replicas(client, runtime, settings):
    """Two replicas' job loops: the first to claim the run does it, the other skips (job_runs)."""
    from app.main import create_app

    other = create_app(settings, run_jobs=False).state.runtime
    try:
        assert cleanup.run_if_due(runtime.sessions, settings) is not None
        assert cleanup.run_if_due(other.sessions, settings) is None
        with runtime.sessions() as db:
            db.execute(text("UPDATE job_runs SET last_run_at = last_run_at - :s WHERE name = 'cleanup'"), {"s": cleanup.EVERY})
            db.commit()
        assert cleanup.run_if_due(other.sessions, settings) is not None
    finally:
        other.engine.dispose()
