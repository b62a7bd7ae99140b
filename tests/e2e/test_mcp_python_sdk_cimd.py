"""End to end with the official MCP Python SDK client identified by a Client ID Metadata Document
(MCP authorization (2025-11-25): each SDK identifies itself by dynamic registration or by CIMD).

`OAuthClientProvider(..., client_metadata_url=...)`: Ostiary advertises
client_id_metadata_document_supported, so the SDK uses the https URL as its client_id and never
registers; Ostiary fetches the document from a local https server it trusts through a test CA.
The browser step and the client plumbing are tests/support.py's, as in test_mcp_python_sdk.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from tests.e2e.cimd_stack import CimdStack, cimd_stack
from tests.support import (
    PASSWORD,
    USERNAME,
    CallbackListener,
    MemoryStorage,
    browser_context,
    jwt_claims,
    sign_in_and_allow,
)

pytestmark = pytest.mark.slow

CLIENT_NAME = "Ostiary e2e (MCP Python SDK, CIMD)"
DOCUMENT = "/py-sdk-cimd/client.json"


@pytest.fixture
def stack(tmp_path) -> Iterator[CimdStack]:
    with cimd_stack(tmp_path, username=USERNAME, password=PASSWORD) as stack:
        yield stack


async def test_python_sdk_mcp_2025_11_25_client_id_metadata_document(chromium: str, stack: CimdStack):
    callback = CallbackListener()
    metadata_url = stack.documents.publish(DOCUMENT, client_name=CLIENT_NAME, redirect_uris=[callback.url])
    consents: list[dict[str, list[str]]] = []
    storage = MemoryStorage()
    requests: list[tuple[str, str, int]] = []  # every exchange the SDK's HTTP client made
    try:
        with anyio.fail_after(45):
            async with browser_context(chromium) as browser:

                async def redirect_handler(url: str) -> None:
                    consents.append(await sign_in_and_allow(browser, url, callback.url))

                provider = OAuthClientProvider(
                    server_url=stack.mcp_url,
                    client_metadata=OAuthClientMetadata(
                        client_name=CLIENT_NAME,
                        redirect_uris=[callback.url],
                        grant_types=["authorization_code", "refresh_token"],
                        response_types=["code"],
                        token_endpoint_auth_method="none",
                    ),
                    storage=storage,
                    redirect_handler=redirect_handler,
                    callback_handler=callback.next_result,
                    client_metadata_url=metadata_url,
                )

                async def record(response: httpx2.Response) -> None:
                    requests.append((response.request.method, str(response.request.url), response.status_code))

                async with (
                    httpx2.AsyncClient(auth=provider, timeout=30.0, event_hooks={"response": [record]}) as http,
                    Client(streamable_http_client(stack.mcp_url, http_client=http), cache=None) as client,
                ):
                    # 401 -> RFC 9728 -> RFC 8414 discovery, the metadata document as client_id,
                    # sign-in and consent for the challenged scope.
                    tools = await client.list_tools()
                    assert {t.name for t in tools.tools} == {"list_notes", "add_note"}
                    listed = await client.call_tool("list_notes", {})
                    assert not listed.is_error, listed
                    first_scope = storage.tokens.scope.split()

                    # Step-up (403 insufficient_scope) under the same URL client_id: the
                    # document names no scope, so nothing caps the later request.
                    added = await client.call_tool("add_note", {"text": "buy milk"})
                    assert not added.is_error, added
                    listed = await client.call_tool("list_notes", {})
    finally:
        callback.close()

    assert not listed.is_error and "buy milk" in str(listed.structured_content or listed.content), listed
    assert (requests[0][1], requests[0][2]) == (stack.mcp_url, 401)
    assert ("GET", f"{stack.issuer}/.well-known/oauth-authorization-server", 200) in requests
    assert not [r for r in requests if r[1].endswith("/register")], f"registered despite CIMD: {requests}"
    assert storage.client_info.client_id == metadata_url
    assert stack.documents.requests == [DOCUMENT]  # fetched once, then cached

    assert len(consents) == 2, consents
    assert "mcp:read" in consents[0]["new"] and "mcp:read" in first_scope and "mcp:write" not in first_scope
    assert consents[1]["new"] == ["mcp:write"] and "mcp:read" in consents[1]["granted"]

    claims = jwt_claims(storage.tokens.access_token)
    assert claims["aud"] in (stack.mcp_url, [stack.mcp_url]), claims  # RFC 8707: the MCP server
    assert claims["client_id"] == metadata_url
    assert claims["iss"] == stack.issuer
    assert {"mcp:read", "mcp:write"} <= set(claims["scope"].split())
