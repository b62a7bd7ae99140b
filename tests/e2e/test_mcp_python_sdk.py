"""End to end with the official MCP Python SDK client.

Real processes: `ostiary serve` (set up with the real CLI) and the example MCP server in
examples/mcp_server/. The SDK's OAuthClientProvider discovers Ostiary from the MCP server's 401
(RFC 9728), registers dynamically (RFC 7591), and its redirect_handler signs in and consents on
the real pages in headless Chromium. Then: step-up on 403 insufficient_scope with incremental
consent, refresh after the access token expires, and refresh-token reuse detection (OAuth 2.1
§4.3.1, RFC 9700 §4.14.2).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from tests.e2e.servers import example_mcp_server, ostiary_cli, ostiary_env, ostiary_server
from tests.support import (
    PASSWORD,
    USERNAME,
    CallbackListener,
    MemoryStorage,
    browser_context,
    empty_database,
    free_port,
    refresh,
    sign_in_and_allow,
    sql,
)

pytestmark = pytest.mark.slow

TOKEN_TTL = 30  # the shortest access-token lifetime Ostiary allows


# -- the stack: database, Ostiary, the example MCP server --------------------------------------


@dataclass
class Stack:
    issuer: str
    mcp_url: str
    database_url: str


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    as_port, rs_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{as_port}"
    mcp_url = f"http://127.0.0.1:{rs_port}/mcp"
    with empty_database(tmp_path, "ostiary_e2e") as database_url:
        # Grace window 0: a replayed refresh token is reuse as soon as a second has passed.
        env = ostiary_env(issuer, database_url, refresh_grace_period="0")
        with ostiary_server(env, as_port, tmp_path / "ostiary.log"):
            ostiary_cli(env, "users", "create", USERNAME, "--password-stdin", stdin=PASSWORD + "\n")
            ostiary_cli(
                env, "resources", "add", mcp_url, "--name", "Notes",
                "--scope", "mcp:read=Read your notes", "--scope", "mcp:write=Change your notes",
                "--default-scope", "mcp:read", "--token-ttl", str(TOKEN_TTL),
            )  # fmt: skip
            with example_mcp_server(issuer, mcp_url, rs_port, tmp_path / "mcp-server.log"):
                yield Stack(issuer, mcp_url, database_url)


def audit_count(database_url: str, event: str) -> int:
    return sql(database_url, "SELECT count(*) FROM audit_events WHERE event = :e", e=event)[0][0]


# -- the test ----------------------------------------------------------------------------------


async def test_sdk_client_discovers_registers_steps_up_refreshes_and_reuse_kills_the_family(chromium: str, stack: Stack):
    callback = CallbackListener()
    consents: list[dict[str, list[str]]] = []  # what each interactive authorization's consent page showed
    storage = MemoryStorage()
    challenges: list[tuple[int, str]] = []  # the MCP server's 401/403 answers the SDK saw
    try:
        with anyio.fail_after(TOKEN_TTL + 60):
            async with browser_context(chromium) as browser:

                async def redirect_handler(url: str) -> None:
                    # The browser, not the httpx2 client that carries auth=provider (that deadlocks).
                    consents.append(await sign_in_and_allow(browser, url, callback.url))

                provider = OAuthClientProvider(
                    server_url=stack.mcp_url,
                    client_metadata=OAuthClientMetadata(
                        client_name="Ostiary e2e (MCP Python SDK)",
                        redirect_uris=[callback.url],
                        grant_types=["authorization_code", "refresh_token"],
                        response_types=["code"],
                    ),
                    storage=storage,
                    redirect_handler=redirect_handler,
                    callback_handler=callback.next_result,
                )

                async def record(response: httpx2.Response) -> None:
                    if str(response.request.url) == stack.mcp_url and response.status_code in (401, 403):
                        challenges.append((response.status_code, response.headers.get("www-authenticate", "")))

                async with (
                    httpx2.AsyncClient(auth=provider, timeout=30.0, event_hooks={"response": [record]}) as http,
                    Client(streamable_http_client(stack.mcp_url, http_client=http), cache=None) as client,
                ):
                    await _read_then_step_up(client, consents, storage, challenges)
                    old_refresh = storage.tokens.refresh_token
                    refreshed_at = await _expire_and_refresh(client, provider, consents, storage, challenges, stack)
    finally:
        callback.close()

    # Replay the refresh token that was just rotated away, after the grace window (0 s; the
    # server counts whole seconds): reuse. It revokes the family, so the current one fails too.
    await anyio.sleep(max(0.0, refreshed_at + 1.1 - time.time()))
    client_id = storage.client_info.client_id
    async with httpx.AsyncClient(base_url=stack.issuer) as http:
        replay = await refresh(http, client_id, old_refresh, resource=stack.mcp_url)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant", replay.text
        current = await refresh(http, client_id, storage.tokens.refresh_token, resource=stack.mcp_url)
        assert current.status_code == 400 and current.json()["error"] == "invalid_grant", current.text
    assert audit_count(stack.database_url, "token.reuse_detected") == 1


async def _read_then_step_up(client: Client, consents: list, storage: MemoryStorage, challenges: list) -> None:
    # Discovery (401 -> PRM -> AS metadata), registration, sign-in and consent: for mcp:read only,
    # the scope the 401 challenge names.
    tools = await client.list_tools()
    assert {t.name for t in tools.tools} == {"list_notes", "add_note"}
    assert [status for status, _ in challenges] == [401] and 'scope="mcp:read"' in challenges[0][1]
    assert len(consents) == 1
    assert "mcp:read" in consents[0]["new"] and "mcp:write" not in consents[0]["new"] + consents[0]["granted"]
    assert storage.client_info is not None and storage.client_info.client_id
    assert "mcp:write" not in storage.tokens.scope.split()

    listed = await client.call_tool("list_notes", {})
    assert not listed.is_error, listed

    # add_note needs mcp:write: 403 insufficient_scope, the SDK re-authorizes, and the consent
    # page asks for nothing but the new scope (incremental consent).
    added = await client.call_tool("add_note", {"text": "buy milk"})
    assert not added.is_error, added
    assert [status for status, _ in challenges] == [401, 403]
    assert 'error="insufficient_scope"' in challenges[1][1] and "mcp:write" in challenges[1][1]
    assert len(consents) == 2
    assert consents[1]["new"] == ["mcp:write"], consents[1]
    assert "mcp:read" in consents[1]["granted"]
    assert {"mcp:read", "mcp:write"} <= set(storage.tokens.scope.split())

    listed = await client.call_tool("list_notes", {})
    assert not listed.is_error and "buy milk" in str(listed.structured_content or listed.content), listed


async def _expire_and_refresh(
    client: Client, provider, consents: list, storage: MemoryStorage, challenges: list, stack: Stack
) -> float:
    """Wait out the access token (TOKEN_TTL), then keep working: the SDK refreshes, with no new
    sign-in. Returns when the refresh happened."""
    old_access, old_refresh = storage.tokens.access_token, storage.tokens.refresh_token
    assert old_refresh, "Ostiary issues a refresh token to a client registered for the refresh_token grant"
    await anyio.sleep(max(0.0, provider.context.token_expiry_time - time.time()) + 0.5)

    # The MCP server itself now refuses the old token.
    async with httpx.AsyncClient() as http:
        expired = await http.post(
            stack.mcp_url,
            headers={"Authorization": f"Bearer {old_access}", "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
    assert expired.status_code == 401 and 'error="invalid_token"' in expired.headers["www-authenticate"]

    refreshed_before = audit_count(stack.database_url, "token.refreshed")
    listed = await client.call_tool("list_notes", {})
    refreshed_at = time.time()
    assert not listed.is_error and "buy milk" in str(listed.structured_content or listed.content), listed
    assert len(consents) == 2, "refreshed without a new interactive authorization"
    assert len(challenges) == 2, "refreshed before sending, never presenting the expired token"
    assert storage.tokens.access_token != old_access
    assert storage.tokens.refresh_token and storage.tokens.refresh_token != old_refresh  # rotated
    assert audit_count(stack.database_url, "token.refreshed") == refreshed_before + 1
    return refreshed_at
