"""A consent covers the client the user saw (docs/decisions.md#consent-is-bound-to-what-the-user-saw):
when a client changes its name or redirect hosts after the user consented (RFC 7592 §2.2 update,
or a new Client ID Metadata Document), the next authorization asks again."""

from __future__ import annotations

import pytest

from tests.support import (
    REDIRECT,
    audit_events,
    authorize,
    authorize_params,
    grant_rows,
    pkce,
    query,
    signed_in_flow,
    tokens_for,
)

pytestmark = pytest.mark.anyio

NEW_REDIRECT = "https://elsewhere.example/callback"


def update_body(reg: dict, **changes) -> dict:
    server = ("registration_access_token", "registration_client_uri", "client_id_issued_at", "client_secret_expires_at")
    body = {k: v for k, v in reg.items() if k not in server}
    body.update(changes)
    return body


async def silent_code(client, client_id: str, redirect_uri: str = REDIRECT):
    """/authorize for a signed-in user who consented before: straight back with a code, or the
    consent page (a redirect to /consent/...)."""
    _, challenge = pkce()
    return await client.get(
        "/authorize", params=authorize_params(client_id, challenge, redirect_uri=redirect_uri, scope="mcp:read")
    )


async def test_unchanged_client_is_not_asked_again(client, runtime):
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    response = await silent_code(client, reg["client_id"])
    assert response.status_code == 302 and "code" in query(response.headers["location"])
    [grant] = grant_rows(runtime)
    assert (grant.client_name, grant.redirect_hosts) == ("Test MCP Client", ["127.0.0.1:9876"])


@pytest.mark.parametrize(
    "changes, redirect_uri",
    [
        pytest.param({"redirect_uris": [REDIRECT, NEW_REDIRECT]}, NEW_REDIRECT, id="new redirect host"),
        pytest.param({"client_name": "Totally Different App"}, REDIRECT, id="new name"),
    ],
)
async def test_client_that_changed_is_asked_again(client, runtime, changes, redirect_uri):
    """RFC 7592 §2.2: the client updates itself with its own token; the consent given to the
    old name and hosts does not carry over."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    headers = {"Authorization": f"Bearer {reg['registration_access_token']}"}
    updated = await client.put(reg["registration_client_uri"], json=update_body(reg, **changes), headers=headers)
    assert updated.status_code == 200, updated.text
    response = await silent_code(client, reg["client_id"], redirect_uri)
    assert response.status_code == 303 and "/consent/" in response.headers["location"]
    page = await client.get(response.headers["location"])
    assert page.status_code == 200 and "mcp:read" in page.text
    # Allowing binds the consent to the client as it is now; the scopes are replaced, not merged.
    _, challenge = pkce()
    done = await authorize(client, authorize_params(reg["client_id"], challenge, redirect_uri=redirect_uri, scope="mcp:read"))
    assert done.status_code == 302 and done.headers["location"].startswith(redirect_uri)
    [grant] = grant_rows(runtime)
    assert grant.scope == "mcp:read"
    assert audit_events(runtime, "consent.granted")[-1].details["client_changed"] is True
    again = await silent_code(client, reg["client_id"], redirect_uri)
    assert again.status_code == 302 and "code" in query(again.headers["location"])
