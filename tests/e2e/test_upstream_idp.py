"""End to end: a user signs in to Ostiary through a real OpenID Connect provider (panva's
oidc-provider 9, tests/upstream_idp/, Node 24 from npm) in headless Chromium, and the official
MCP Python SDK client then completes its authorization with that identity.

Real processes: the provider, `ostiary serve` (the provider added with the real CLI, its loopback
address allowed for outbound requests) and the example MCP server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from tests.e2e.servers import example_mcp_server, ostiary_cli, ostiary_env, ostiary_server, running
from tests.support import (
    ROOT,
    CallbackListener,
    MemoryStorage,
    browser_context,
    clean_env,
    empty_database,
    free_port,
    sql,
    unavailable,
)

pytestmark = pytest.mark.slow

IDP_DIR = ROOT / "tests" / "upstream_idp"
NODE = IDP_DIR / "node_modules" / ".bin" / "node"


@dataclass
class Stack:
    issuer: str
    idp: str
    mcp_url: str
    database_url: str


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    if not NODE.exists():
        unavailable("tests/upstream_idp is not installed: (cd tests/upstream_idp && npm ci)")
    as_port, rs_port, idp_port = free_port(), free_port(), free_port()
    issuer, idp = f"http://127.0.0.1:{as_port}", f"http://127.0.0.1:{idp_port}"
    mcp_url = f"http://127.0.0.1:{rs_port}/mcp"
    secret_file = tmp_path / "idp-secret"
    secret_file.write_text("e2e-upstream-secret")
    idp_env = clean_env(
        PORT=str(idp_port), CLIENT_ID="ostiary", CLIENT_SECRET="e2e-upstream-secret", REDIRECT_URI=f"{issuer}/login/acme/callback"
    )
    with (
        running(
            "oidc-provider",
            [str(NODE), str(IDP_DIR / "server.mjs")],
            idp_env,
            tmp_path / "idp.log",
            idp + "/.well-known/openid-configuration",
        ),
        empty_database(tmp_path, "ostiary_e2e_idp") as database_url,
    ):
        env = ostiary_env(issuer, database_url, cimd_allowed_hosts="127.0.0.1")
        with ostiary_server(env, as_port, tmp_path / "ostiary.log"):
            ostiary_cli(
                env, "resources", "add", mcp_url, "--name", "Notes", "--scope", "mcp:read=Read your notes",
                "--scope", "mcp:write=Change your notes", "--default-scope", "mcp:read",
            )  # fmt: skip
            printed = ostiary_cli(
                env, "idps", "add", "acme", "--issuer", idp, "--client-id", "ostiary", "--client-secret-file", str(secret_file),
                "--scope", "openid", "--scope", "email", "--scope", "profile", "--groups-claim", "groups",
            )  # fmt: skip
            assert f"redirect_uri: {issuer}/login/acme/callback" in printed
            with example_mcp_server(issuer, mcp_url, rs_port, tmp_path / "mcp-server.log"):
                yield Stack(issuer, idp, mcp_url, database_url)


async def _sign_in_upstream(page, stack: Stack) -> None:
    """Ostiary's sign-in page -> "Sign in with acme" -> the provider's sign-in and consent
    pages -> back to Ostiary, signed in."""
    await page.goto(stack.issuer + "/login?next=%2Faccount")
    await page.get_by_role("link", name="Sign in with acme").click()
    await page.wait_for_url(re.compile(re.escape(stack.idp) + "/interaction/"))
    await page.locator("input[name=login]").fill("ada")
    await page.locator("input[name=password]").fill("anything")
    await page.locator("button[type=submit]").click()
    consent = page.locator("button[type=submit]")
    await consent.wait_for(timeout=10_000)
    if stack.idp in page.url:
        await consent.click()  # the provider's consent page
    await page.wait_for_url(stack.issuer + "/account", timeout=10_000)


async def test_a_user_signs_in_through_the_provider_and_an_mcp_client_gets_tokens(chromium: str, stack: Stack):
    callback = CallbackListener()
    storage = MemoryStorage()
    try:
        with anyio.fail_after(90):
            async with browser_context(chromium) as browser:
                page = await browser.new_page()
                await _sign_in_upstream(page, stack)
                assert "ada@acme.example" in await page.content()

                async def redirect_handler(url: str) -> None:
                    # Signed in already: the consent page, then Allow.
                    consent = await browser.new_page()
                    await consent.goto(url)
                    await consent.get_by_role("button", name="Allow").click()
                    await consent.wait_for_url(lambda u: u.startswith(callback.url), timeout=10_000)
                    await consent.close()

                provider = OAuthClientProvider(
                    server_url=stack.mcp_url,
                    client_metadata=OAuthClientMetadata(
                        client_name="Ostiary e2e (upstream IdP)",
                        redirect_uris=[callback.url],
                        grant_types=["authorization_code", "refresh_token"],
                        response_types=["code"],
                    ),
                    storage=storage,
                    redirect_handler=redirect_handler,
                    callback_handler=callback.next_result,
                )
                async with (
                    httpx2.AsyncClient(auth=provider, timeout=30.0) as http,
                    Client(streamable_http_client(stack.mcp_url, http_client=http), cache=None) as client,
                ):
                    listed = await client.call_tool("list_notes", {})
                    assert not listed.is_error, listed
    finally:
        callback.close()
    [(user_id, username, groups)] = sql(stack.database_url, "SELECT id, username, groups FROM users")
    assert username == "ada@acme.example" and "writers" in str(groups)
    assert sql(stack.database_url, "SELECT issuer, subject FROM user_identities") == [(stack.idp, "ada")]
    issued = sql(stack.database_url, "SELECT user_id FROM audit_events WHERE event = 'token.issued'")
    assert issued and all(row[0] == user_id for row in issued)
