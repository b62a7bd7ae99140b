"""Dynamic client registration management (RFC 7592): the registration response carries
`registration_client_uri` and `registration_access_token` (stored hashed); GET reads, PUT
replaces (revalidated like a registration), DELETE removes the client and what was issued to it;
any other token gets 401 with a Bearer challenge (RFC 7592 §2, RFC 6750 §3.1)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.models import Client
from tests.support import (
    ISSUER,
    REDIRECT,
    admin_client,
    audit_events,
    authorize_params,
    database_text,
    exchange,
    pkce,
    refresh,
    register,
    signed_in_flow,
    tokens_for,
)

pytestmark = pytest.mark.anyio

# What a client sends back on PUT: its metadata and client_id, without the server-assigned fields
# RFC 7592 §2.2 forbids in the request.
SERVER_FIELDS = ("registration_access_token", "registration_client_uri", "client_id_issued_at", "client_secret_expires_at")


def update_body(reg: dict, **changes) -> dict:
    body = {k: v for k, v in reg.items() if k not in SERVER_FIELDS}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def auth(reg: dict) -> dict:
    return bearer(reg["registration_access_token"])


def stored(runtime, client_id: str) -> Client | None:
    with runtime.sessions() as db:
        return db.scalar(select(Client).where(Client.id == client_id))


# -- the registration response (RFC 7592 §3) ------------------------------------------------------


async def test_registration_response_has_client_uri_and_access_token_stored_hashed(client, runtime, clean_db):
    """RFC 7592 §3: the 7591 response includes where and with what to manage the registration;
    the token is stored only as a hash (docs/decisions.md#bearer-secrets-are-stored-as-keyed-hmacs)."""
    reg = await register(client)
    assert reg["registration_client_uri"] == f"{ISSUER}/register/{reg['client_id']}"
    token = reg["registration_access_token"]
    assert token.startswith("ostrat_") and len(token) > 30
    row = stored(runtime, reg["client_id"])
    assert row.registration_token_hash and row.registration_token_hash != token
    assert token not in database_text(clean_db)
    assert token.removeprefix("ostrat_") not in database_text(clean_db)


async def test_each_registration_gets_its_own_token(client):
    a, b = await register(client), await register(client)
    assert a["registration_access_token"] != b["registration_access_token"]
    assert a["registration_client_uri"] != b["registration_client_uri"]


# -- read (RFC 7592 §2.1) ---------------------------------------------------------------------------


async def test_read_returns_the_registered_metadata(client):
    """RFC 7592 §2.1: GET with the token returns the client's current metadata, not cacheable."""
    reg = await register(client, client_name="Reader", software_id="x-mcp", logo_uri="https://example.com/logo.png")
    response = await client.get(reg["registration_client_uri"], headers=auth(reg))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    for field in (
        "client_id",
        "client_name",
        "redirect_uris",
        "grant_types",
        "token_endpoint_auth_method",
        "software_id",
        "logo_uri",
    ):
        assert body[field] == reg[field], field
    assert body["client_id_issued_at"] == reg["client_id_issued_at"]
    assert body["registration_client_uri"] == reg["registration_client_uri"]
    assert body["registration_access_token"] == reg["registration_access_token"]


# -- update (RFC 7592 §2.2) --------------------------------------------------------------------------


async def test_update_replaces_redirect_uris(client, runtime):
    """RFC 7592 §2.2: PUT replaces the metadata; the new redirect URI is the one that counts."""
    reg = await signed_in_flow(client, runtime)
    new_redirect = "http://127.0.0.1:7777/new-callback"
    response = await client.put(
        reg["registration_client_uri"],
        json=update_body(reg, redirect_uris=[new_redirect], client_name="Renamed"),
        headers=auth(reg),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["redirect_uris"] == [new_redirect] and body["client_name"] == "Renamed"
    assert body["client_id"] == reg["client_id"]
    assert body["registration_access_token"] == reg["registration_access_token"]
    row = stored(runtime, reg["client_id"])
    assert row.redirect_uris == [new_redirect] and row.name == "Renamed"
    assert audit_events(runtime, "client.updated")

    _, challenge = pkce()
    old = await client.get("/authorize", params=authorize_params(reg["client_id"], challenge))
    assert old.status_code == 400 and "location" not in old.headers  # REDIRECT no longer registered
    new = await client.get("/authorize", params=authorize_params(reg["client_id"], challenge, redirect_uri=new_redirect))
    assert new.status_code in (302, 303), new.text


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param(
            {"redirect_uris": ["http://app.example.com/cb"]},
            "invalid_redirect_uri",
            id="http non-loopback redirect (RFC 7591 3.2.2)",
        ),
        pytest.param({"redirect_uris": ["https://app.example.com/cb#x"]}, "invalid_redirect_uri", id="fragment"),
        pytest.param({"redirect_uris": []}, "invalid_redirect_uri", id="no redirect URIs"),
        pytest.param({"grant_types": ["client_credentials"]}, "invalid_client_metadata", id="no authorization_code grant"),
        pytest.param(
            {"token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata", id="auth method cannot change"
        ),
        pytest.param({"client_id": None}, "invalid_request", id="missing client_id (RFC 7592 2.2)"),
        pytest.param({"client_id": "someone-else"}, "invalid_request", id="other client_id (RFC 7592 2.2)"),
        pytest.param(
            {"registration_access_token": "x"}, "invalid_request", id="registration_access_token in body (RFC 7592 2.2)"
        ),
        pytest.param({"registration_client_uri": "x"}, "invalid_request", id="registration_client_uri in body (RFC 7592 2.2)"),
        pytest.param({"client_id_issued_at": 1}, "invalid_request", id="client_id_issued_at in body (RFC 7592 2.2)"),
    ],
)
async def test_update_is_revalidated(client, runtime, changes, error):
    """RFC 7592 §2.2 / §2.3: an update is validated like a registration; a refused one changes
    nothing."""
    reg = await register(client)
    response = await client.put(reg["registration_client_uri"], json=update_body(reg, **changes), headers=auth(reg))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    row = stored(runtime, reg["client_id"])
    assert row.redirect_uris == [REDIRECT] and row.grant_types == ["authorization_code", "refresh_token"]


# -- delete (RFC 7592 §2.3) --------------------------------------------------------------------------


async def test_delete_removes_the_client_and_what_was_issued_to_it(client, runtime):
    """RFC 7592 §2.3: DELETE answers 204 and the client is gone: its token endpoint requests get
    401 invalid_client (MCP clients then re-register), its refresh tokens stop working, its
    registration access token is no longer valid."""
    reg = await signed_in_flow(client, runtime)
    tokens = await tokens_for(client, reg["client_id"])
    code_verifier, challenge = pkce()

    response = await client.delete(reg["registration_client_uri"], headers=auth(reg))
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert stored(runtime, reg["client_id"]) is None
    assert [e.details.get("reason") for e in audit_events(runtime, "client.deleted")] == ["self"]

    refreshed = await refresh(client, reg["client_id"], tokens["refresh_token"])
    assert refreshed.status_code == 401, refreshed.text
    assert refreshed.json()["error"] == "invalid_client"
    exchanged = await exchange(client, reg["client_id"], "any-code", code_verifier)
    assert exchanged.status_code == 401 and exchanged.json()["error"] == "invalid_client"

    again = await client.get(reg["registration_client_uri"], headers=auth(reg))
    assert again.status_code == 401
    assert again.headers["www-authenticate"].startswith("Bearer")

    page = await client.get("/authorize", params=authorize_params(reg["client_id"], challenge))
    assert page.status_code == 400 and "location" not in page.headers


# -- authentication of the management requests (RFC 7592 §2, RFC 6750 §3.1) --------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no Authorization"),
        pytest.param(bearer("ostrat_not-a-real-token"), id="unknown token"),
        pytest.param({"Authorization": "Bearer"}, id="empty Bearer"),
        pytest.param({"Authorization": "Basic b3N0cmF0Xw=="}, id="Basic scheme"),
        pytest.param(bearer("ostrat_" + "a" * 300), id="overlong token"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_missing_or_wrong_token_is_401(client, runtime, headers, method):
    """RFC 7592 §2: an invalid registration access token is answered as RFC 6750 §3.1 says:
    401 invalid_token with a Bearer challenge; nothing changes."""
    reg = await register(client)
    body = update_body(reg, client_name="Hijacked") if method == "PUT" else None
    response = await client.request(method, reg["registration_client_uri"], json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith("Bearer")
    row = stored(runtime, reg["client_id"])
    assert row is not None and row.name == "Test MCP Client"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_token_of_one_client_does_not_work_on_another(client, runtime, method):
    """RFC 7592 §2: a registration access token is valid for its own client only; on another
    client's URI it is an invalid token (401), and that client is neither shown nor changed."""
    a, b = await register(client, client_name="A"), await register(client, client_name="B")
    body = update_body(b, client_name="Hijacked") if method == "PUT" else None
    response = await client.request(method, b["registration_client_uri"], json=body, headers=auth(a))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "B" not in response.json().values()
    row = stored(runtime, b["client_id"])
    assert row is not None and row.name == "B"


async def test_token_does_not_manage_clients_that_were_not_registered_dynamically(client, runtime):
    """Operator-created clients have no registration URI to manage (RFC 7592 applies to
    dynamically registered clients)."""
    reg = await register(client)
    admin_id, _ = admin_client(runtime)
    response = await client.delete(f"/register/{admin_id}", headers=auth(reg))
    assert response.status_code == 401
    assert stored(runtime, admin_id) is not None
