"""Registration policy (OSTIARY_REGISTRATION): `open` (the default: MCP clients register
themselves), `token` (an initial access token from `ostiary clients initial-token` is required,
RFC 7591 §3), `closed` (no registration endpoint; clients registered before still manage
themselves through RFC 7592); and the per-IP and global registration
rate limits (429 with Retry-After and an RFC 6749 error body)."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import text

from app.main import create_app
from tests.support import REDIRECT, audit_events, database_text, run_ostiary

pytestmark = pytest.mark.anyio

BODY = {"redirect_uris": [REDIRECT], "client_name": "Policy Test Client"}

TOKEN_MODE = pytest.mark.parametrize("settings_overrides", [pytest.param({"registration": "token"}, id="registration=token")])
CLOSED_MODE = pytest.mark.parametrize("settings_overrides", [pytest.param({"registration": "closed"}, id="registration=closed")])


def initial_token(database_url: str, *args: str) -> str:
    """An initial access token made the way an operator makes one: the real CLI."""
    result = run_ostiary(database_url, "clients", "initial-token", *args)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("ostiat_"), result.stdout
    return token


async def register_with(client, token: str | None = None, **headers):
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post("/register", json=BODY, headers=headers)


async def metadata(client) -> dict:
    return (await client.get("/.well-known/oauth-authorization-server")).json()


def assert_invalid_token(response) -> None:
    """RFC 7591 §3 / RFC 6750 §3.1: a missing or bad initial access token is a 401."""
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith("Bearer")


# -- open (default) -----------------------------------------------------------------------------


async def test_open_registration_needs_no_token(client):
    """Default `open`: MCP clients register with no credentials (MCP authorization, DCR)."""
    response = await register_with(client)
    assert response.status_code == 201, response.text
    assert "registration_endpoint" in await metadata(client)


async def test_open_registration_ignores_an_authorization_header(client):
    response = await register_with(client, "ostiat_whatever")
    assert response.status_code == 201, response.text


# -- token (RFC 7591 §3) ---------------------------------------------------------------------


@TOKEN_MODE
@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="missing"),
        pytest.param("ostiat_not-issued", id="unknown"),
        pytest.param("", id="empty"),
    ],
)
async def test_token_mode_refuses_missing_or_invalid_initial_token(client, runtime, token):
    assert_invalid_token(await register_with(client, token))
    assert not audit_events(runtime, "client.registered")


@TOKEN_MODE
async def test_token_mode_refuses_other_auth_schemes(client):
    assert_invalid_token(await client.post("/register", json=BODY, headers={"Authorization": "Basic b3N0aWF0Xw=="}))


@TOKEN_MODE
async def test_cli_initial_token_works_exactly_as_many_times_as_allowed(client, clean_db):
    """`ostiary clients initial-token --uses 2`: two registrations, then 401; the token is
    stored only as a hash; the registration endpoint is still advertised."""
    token = initial_token(clean_db, "--uses", "2")
    assert token not in database_text(clean_db)
    first = await register_with(client, token)
    assert first.status_code == 201, first.text
    second = await register_with(client, token)
    assert second.status_code == 201, second.text
    assert first.json()["client_id"] != second.json()["client_id"]
    assert first.json()["registration_access_token"] != token
    assert_invalid_token(await register_with(client, token))
    assert "registration_endpoint" in await metadata(client)


@TOKEN_MODE
async def test_expired_initial_token_is_refused(client, runtime, clean_db):
    token = initial_token(clean_db, "--uses", "5", "--expires-in", "60")
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE initial_access_tokens SET expires_at = :t"), {"t": int(time.time()) - 1})
    assert_invalid_token(await register_with(client, token))


@TOKEN_MODE
async def test_refused_registration_does_not_spend_the_token(client, clean_db):
    """A registration refused for its metadata (400) does not use up the initial access token:
    the client can fix its request and retry with the same one-use token (the CLI default)."""
    token = initial_token(clean_db)
    bad = await client.post(
        "/register", json={**BODY, "redirect_uris": ["http://evil.example/cb"]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert bad.status_code == 400, bad.text
    good = await register_with(client, token)
    assert good.status_code == 201, good.text
    assert_invalid_token(await register_with(client, token))


# -- closed -----------------------------------------------------------------------------------


@CLOSED_MODE
async def test_closed_registration_is_not_served(client):
    """`closed`: the endpoint does not exist and the metadata does not advertise it."""
    response = await register_with(client)
    assert response.status_code == 404, response.text  # no such endpoint
    doc = await metadata(client)
    assert "registration_endpoint" not in doc
    assert doc["client_id_metadata_document_supported"] is True  # clients can still identify


async def test_closing_registration_keeps_rfc7592_management_of_earlier_clients(client, settings):
    """An operator who closes registration stops new clients, not the ones registered before:
    RFC 7592 read, update and delete still work with their registration access token, and still
    refuse a missing token (RFC 7592 §2: 401)."""
    reg = (await register_with(client)).json()
    uri = reg["registration_client_uri"].removeprefix(settings.issuer)
    auth = {"Authorization": f"Bearer {reg['registration_access_token']}"}

    closed = create_app(settings.model_copy(update={"registration": "closed"}), run_jobs=False)
    transport = httpx.ASGITransport(app=closed, client=("127.0.0.1", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as later:
            assert (await register_with(later)).status_code == 404
            assert (await later.get(uri)).status_code == 401
            read = await later.get(uri, headers=auth)
            assert read.status_code == 200, read.text
            assert read.json()["client_id"] == reg["client_id"]
            body = {**BODY, "client_id": reg["client_id"], "client_name": "Renamed While Closed"}
            updated = await later.put(uri, json=body, headers=auth)
            assert updated.status_code == 200, updated.text
            assert updated.json()["client_name"] == "Renamed While Closed"
            assert (await later.delete(uri, headers=auth)).status_code == 204
            assert (await later.get(uri, headers=auth)).status_code == 401  # gone with its token
    finally:
        closed.state.runtime.engine.dispose()


# -- rate limits --------------------------------------------------------------------------------


def assert_rate_limited(response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["error"] == "temporarily_unavailable" and body["error_description"]


@pytest.mark.parametrize(
    "settings_overrides",
    [pytest.param({"registration_rate_per_ip": "3/minute", "rate_limit_exempt": []}, id="3 per minute per IP")],
)
async def test_per_ip_registration_rate_limit(client, new_client, runtime):
    """Per-IP limit: the fourth registration within the minute from one address gets 429 with
    Retry-After and an OAuth error body; another address is unaffected; X-Forwarded-For from an
    untrusted peer changes nothing."""
    for _ in range(3):
        assert (await register_with(client)).status_code == 201
    assert_rate_limited(await register_with(client))
    assert_rate_limited(await register_with(client, **{"X-Forwarded-For": "203.0.113.9"}))
    other = new_client(client_addr=("192.0.2.44", 40000))
    response = await register_with(other)
    assert response.status_code == 201, response.text
    assert len(audit_events(runtime, "client.registered")) == 4


@pytest.mark.parametrize(
    "settings_overrides",
    [pytest.param({"registration_rate_per_ip": "100/minute", "registration_rate_global": "3/minute"}, id="3 per minute overall")],
)
async def test_global_registration_rate_limit(new_client):
    """The global ceiling trips even when every request comes from a different address."""
    for i in range(3):
        response = await register_with(new_client(client_addr=(f"192.0.2.{10 + i}", 40000)))
        assert response.status_code == 201, response.text
    assert_rate_limited(await register_with(new_client(client_addr=("192.0.2.99", 40000))))
