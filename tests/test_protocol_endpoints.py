"""The token, revocation, introspection and registration endpoints are answered before FastAPI's
router (docs/decisions.md#protocol-endpoints-bypass-the-router): what a client sees must not
change with that. Another method is 405 with Allow, a failing database is a 503 with an RFC 6749
error body, the edge, CORS, request id and metrics still apply, and a closed registration
endpoint is not served."""

from __future__ import annotations

import httpx
import pytest

from tests.support import REDIRECT, register

pytestmark = pytest.mark.anyio

PROTOCOL_PATHS = ["/token", "/revoke", "/introspect", "/register"]
CLOSED = pytest.mark.parametrize("settings_overrides", [pytest.param({"registration": "closed"}, id="registration=closed")])


@pytest.mark.parametrize("path", PROTOCOL_PATHS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_are_405_with_allow(client, path, method):
    """RFC 9110 §15.5.6: 405 names the allowed methods in Allow; the body is RFC 6749 §5.2-shaped."""
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == "invalid_request"
    assert response.headers["x-request-id"]


async def test_other_method_from_a_browser_is_a_page(client):
    response = await client.get("/token", headers={"Accept": "text/html"})
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("text/html")
    assert "Method not allowed" in response.text
    assert response.headers["x-frame-options"] == "DENY"  # the request middleware still applies


@pytest.mark.parametrize("path", PROTOCOL_PATHS)
async def test_database_down_is_503_with_retry_after(client, kill_database, path):
    """RFC 9110 §15.6.4: a database that cannot be reached is 503 with Retry-After, with an
    RFC 6749 §5.2 error body (temporarily_unavailable), never a 500 or a trace."""
    kill_database()
    if path == "/register":
        response = await client.post(path, json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})
    else:  # the caller authenticates (RFC 7662 §2.1 requires it of introspection), so a client is read
        form = {"grant_type": "refresh_token", "refresh_token": "x", "token": "x"}
        response = await client.post(path, data=form, auth=("some-client", "its-secret"))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"error": "temporarily_unavailable", "error_description": "The server is temporarily unavailable."}
    assert "Traceback" not in response.text


async def test_bad_form_is_an_rfc6749_error(client):
    """RFC 6749 §5.2: a form the server cannot read is invalid_request, not a framework error."""
    fields = "&".join(f"f{i}=x" for i in range(101))
    response = await client.post("/token", content=fields, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "Too many fields" in response.json()["error_description"]


async def test_cors_and_request_id_still_apply(client):
    """Browser-based MCP clients call /token cross-origin (docs/decisions.md#cors)."""
    response = await client.post(
        "/token", data={"grant_type": "client_credentials"}, headers={"Origin": "https://app.example", "X-Request-Id": "abc-123"}
    )
    assert response.status_code in (400, 401)
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["cache-control"] == "no-store"  # RFC 6749 §5.2


async def test_registration_is_served(client):
    """RFC 7591 §3.2.1: 201 with the client's metadata (the route below the router)."""
    reg = await register(client)
    assert reg["client_id"] and reg["redirect_uris"] == [REDIRECT]


@CLOSED
async def test_closed_registration_is_404(client):
    response = await client.post("/register", json={"redirect_uris": [REDIRECT]})
    assert response.status_code == 404
    assert (await client.post("/token", data={"grant_type": "x"})).status_code == 400  # the others still are


async def test_an_exception_that_escapes_every_layer_is_answered_by_the_request_middleware(caplog):
    """The outermost middleware is the error channel of last resort: an exception that reaches
    it before a response started becomes an RFC 6749 §5.2-shaped 500 (server_error) with a
    request id and the error logged, never a trace or a bare connection reset."""
    from app.http.errors import ErrorResponses
    from app.http.middleware import RequestMiddleware

    async def broken(scope, receive, send):
        raise RuntimeError("secret detail")

    app = RequestMiddleware(broken, errors=ErrorResponses(lambda status, title, message: f"<p>{message}</p>".encode()))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        response = await client.post("/token", data={"grant_type": "x"})
        page = await client.get("/authorize", headers={"Accept": "text/html"})
    assert response.status_code == 500
    assert response.json() == {"error": "server_error", "error_description": "An unexpected error occurred."}
    assert response.headers["x-request-id"]
    assert "secret detail" not in response.text
    assert page.status_code == 500 and "The error was logged" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "unhandled error on POST /token" in caplog.text


@pytest.mark.parametrize(
    "settings_overrides", [pytest.param({"issuer": "https://auth.example.com/tenant"}, id="issuer with a path")]
)
async def test_served_under_the_issuers_path_only(client):
    """RFC 8414 §2: the endpoints are the ones the metadata names, under the issuer's path; the
    same path outside it is no endpoint of this server."""
    metadata = (await client.get("https://auth.example.com/.well-known/oauth-authorization-server/tenant")).json()
    assert metadata["token_endpoint"] == "https://auth.example.com/tenant/token"
    response = await client.post(metadata["token_endpoint"], data={"grant_type": "urn:example:unknown"})
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"
    assert (await client.get(metadata["token_endpoint"])).status_code == 405
    assert (await client.post("https://auth.example.com/token", data={"grant_type": "x"})).status_code == 404
