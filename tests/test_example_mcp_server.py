"""The example MCP server (examples/mcp_server/) as resource servers should behave: the MCP
Streamable HTTP transport's Origin rule comes before any token check, and a request without a
token gets the RFC 9728 / RFC 6750 challenge."""

from __future__ import annotations

import sys

import httpx
import pytest

from tests.support import ROOT

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:8001/mcp"


@pytest.fixture
def app():
    sys.path.insert(0, str(ROOT / "examples" / "mcp_server"))
    try:
        from server import build_app

        yield build_app(issuer="http://127.0.0.1:8000", url=URL, read_scope="mcp:read", write_scope="mcp:write")
    finally:
        sys.path.remove(str(ROOT / "examples" / "mcp_server"))
        for name in ("server", "ostiary_auth"):  # plain module names: leave no trace for other tests
            sys.modules.pop(name, None)


async def post(app, headers: dict) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8001") as client:
        return await client.post("/mcp", json=body, headers={"Accept": "application/json, text/event-stream", **headers})


async def test_a_foreign_origin_is_403_before_any_token_check(app):
    """MCP transports (Streamable HTTP, security warning): an invalid Origin is 403."""
    response = await post(app, {"Origin": "https://evil.example", "Authorization": "Bearer not-a-token"})
    assert response.status_code == 403
    assert "www-authenticate" not in response.headers


async def test_without_a_token_the_challenge_names_the_metadata_and_scope(app):
    """RFC 9728 §5.1 / RFC 6750 §3: 401 with resource_metadata and the scope to ask for; the
    server's own Origin and native clients (no Origin) reach this far."""
    for headers in ({}, {"Origin": "http://127.0.0.1:8001"}):
        response = await post(app, headers)
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        assert "resource_metadata=" in challenge and 'scope="mcp:read"' in challenge
