"""The request edge: Host allow-list against DNS rebinding, X-Forwarded-* only
from trusted proxies, TLS required off loopback, caps on headers, URI and bodies, and CORS only
on the public protocol endpoints."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from app.security.hosts import HostPolicy, ProxyPolicy, split_host
from tests.support import UvicornServer, make_settings, signed_in_flow, tokens_for

pytestmark = pytest.mark.anyio

ORIGIN = "https://app.example.net"


# -- the pure policies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Auth.Example.COM", ("auth.example.com", None)),
        ("auth.example.com:8443", ("auth.example.com", "8443")),
        ("[::1]:8000", ("[::1]", "8000")),
        ("[::1]", ("[::1]", None)),
        ("host:notaport", ("host:notaport", None)),
    ],
)
def test_split_host(value, expected):
    assert split_host(value) == expected


@pytest.mark.parametrize(
    "issuer, extra, host, allowed",
    [
        pytest.param("https://auth.example.com", [], "auth.example.com", True, id="issuer host"),
        pytest.param("https://auth.example.com", [], "AUTH.example.com:443", True, id="case and default port"),
        pytest.param("https://auth.example.com", [], "auth.example.com:8443", False, id="other port"),
        pytest.param("https://auth.example.com", [], "evil.example", False, id="rebinding name"),
        pytest.param("https://auth.example.com", [], "auth.example.com.evil.example", False, id="suffix trick"),
        pytest.param("https://auth.example.com", [], "", False, id="empty"),
        pytest.param("https://auth.example.com", ["internal.lan"], "internal.lan:8000", True, id="extra host any port"),
        pytest.param("https://auth.example.com", ["internal.lan:9000"], "internal.lan:8000", False, id="extra host wrong port"),
        pytest.param("http://127.0.0.1:8000", [], "localhost:8000", True, id="loopback alias"),
        pytest.param("http://127.0.0.1:8000", [], "[::1]:8000", True, id="loopback v6 alias"),
        pytest.param("http://127.0.0.1:8000", [], "localhost:9000", False, id="loopback other port"),
        pytest.param("http://127.0.0.1:8000", [], "rebind.evil.example:8000", False, id="rebinding to loopback"),
    ],
)
def test_host_policy_rfc9110_s7_2(issuer, extra, host, allowed, tmp_path):
    settings = make_settings(f"sqlite:///{tmp_path}/x.db", issuer=issuer, extra_hosts=extra)
    assert HostPolicy(settings).allows(host) is allowed


@pytest.mark.parametrize(
    "trusted, peer, header, client",
    [
        pytest.param([], "10.0.0.2", "203.0.113.9", "10.0.0.2", id="no proxies: header ignored"),
        pytest.param(["10.0.0.0/8"], "192.0.2.7", "203.0.113.9", "192.0.2.7", id="untrusted peer: ignored"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "203.0.113.9", "203.0.113.9", id="trusted peer: believed"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "198.51.100.1, 203.0.113.9", "203.0.113.9", id="spoofed left entry ignored"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "203.0.113.9, 10.0.0.3", "203.0.113.9", id="chain of trusted proxies"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "not-an-ip", "10.0.0.2", id="garbage: peer"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "127.0.0.1, 203.0.113.9", "203.0.113.9", id="forged loopback left"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "10.1.1.1, 203.0.113.9", "203.0.113.9", id="forged private left"),
    ],
)
def test_proxy_policy_trusts_only_configured_proxies(trusted, peer, header, client):
    assert ProxyPolicy(trusted).client(peer, header) == client


@pytest.mark.parametrize("value", ["*", "0.0.0.0/0", "::/0", "10.0.0.0/8,*"])
def test_trusting_every_proxy_is_refused(value, tmp_path, monkeypatch):
    """With every hop trusted the leftmost X-Forwarded-For entry, written by the caller, would
    count: the setting is refused with a message that says what to list instead."""
    from pydantic import ValidationError

    monkeypatch.setenv("OSTIARY_TRUSTED_PROXIES", value)
    with pytest.raises(ValidationError, match="would trust every address"):
        make_settings(f"sqlite:///{tmp_path}/x.db")


@pytest.mark.parametrize(
    "settings_overrides", [{"trusted_proxies": ["192.0.2.1"], "metrics_networks": ["10.0.0.0/8"], "rate_limit_exempt": []}]
)
async def test_a_forged_forwarded_for_does_not_reach_metrics(app, settings):
    """/metrics restricted to 10.0.0.0/8 behind a proxy: a caller who writes a 10.x address on
    the left of X-Forwarded-For is still the address the proxy appended."""
    transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as proxy:
        forged = await proxy.get("/metrics", headers={"X-Forwarded-For": "10.1.1.1, 203.0.113.9"})
        assert forged.status_code in (403, 404)
        inside = await proxy.get("/metrics", headers={"X-Forwarded-For": "10.1.1.1"})
        assert inside.status_code == 200


# -- over HTTP -----------------------------------------------------------------------------------


async def test_wrong_host_is_misdirected_421(client):
    """DNS rebinding: a page on evil.example that resolves to us sends Host: evil.example."""
    response = await client.get("/.well-known/oauth-authorization-server", headers={"Host": "evil.example"})
    assert response.status_code == 421 and response.json()["error"] == "invalid_request"
    page = await client.get("/login", headers={"Host": "evil.example", "Accept": "text/html"})
    assert page.status_code == 421 and "text/html" in page.headers["content-type"]
    assert "x-request-id" in page.headers
    # Probes come straight to the container with any Host.
    assert (await client.get("/healthz", headers={"Host": "10.1.2.3:8000"})).status_code == 200


@pytest.fixture
async def production(app):
    """The app under a public https issuer (settings_overrides below), reached directly or
    through a TLS proxy at 10.0.0.2. Every client made is closed after the test."""
    made: list[httpx.AsyncClient] = []

    def make(peer: str = "10.0.0.2", scheme: str = "https") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        made.append(httpx.AsyncClient(transport=transport, base_url=f"{scheme}://auth.example.test"))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            await c.aclose()


@pytest.mark.parametrize("settings_overrides", [{"issuer": "https://auth.example.test", "trusted_proxies": ["10.0.0.0/8"]}])
async def test_tls_required_off_loopback_unless_a_trusted_proxy_terminated_it(production):
    """OAuth 2.1 §1.5: TLS on every endpoint. Plain http is refused unless a trusted proxy says
    the client used https; an untrusted peer cannot claim it."""
    async with production(scheme="http") as direct:
        refused = await direct.get("/.well-known/oauth-authorization-server")
        assert refused.status_code == 400 and refused.json()["error_description"] == "HTTPS is required."
        proxied = await direct.get("/.well-known/oauth-authorization-server", headers={"X-Forwarded-Proto": "https"})
        assert proxied.status_code == 200 and proxied.json()["issuer"] == "https://auth.example.test"
    async with production(peer="192.0.2.7", scheme="http") as stranger:
        spoofed = await stranger.get("/.well-known/oauth-authorization-server", headers={"X-Forwarded-Proto": "https"})
        assert spoofed.status_code == 400
    async with production(scheme="https") as tls:
        assert (await tls.get("/jwks")).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"trusted_proxies": ["10.0.0.0/8"], "registration_rate_per_ip": "2/minute"}])
async def test_forwarded_for_from_a_trusted_proxy_is_the_client_address(app, settings):
    """Rate limits and audit see the address the trusted proxy reports, not the proxy's."""
    transport = httpx.ASGITransport(app=app, client=("10.0.0.2", 40000))
    async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as proxy:
        body = {"redirect_uris": ["http://127.0.0.1:9/cb"], "client_name": "x"}
        for _ in range(2):
            assert (await proxy.post("/register", json=body, headers={"X-Forwarded-For": "203.0.113.1"})).status_code == 201
        assert (await proxy.post("/register", json=body, headers={"X-Forwarded-For": "203.0.113.1"})).status_code == 429
        assert (await proxy.post("/register", json=body, headers={"X-Forwarded-For": "203.0.113.2"})).status_code == 201


@pytest.mark.parametrize(
    "path, size, expected",
    [
        pytest.param("/token", 64 * 1024 + 1, {413}, id="token over 64 KB"),
        pytest.param("/register", 64 * 1024 + 1, {413}, id="register over 64 KB"),
        pytest.param("/revoke", 64 * 1024 + 1, {413}, id="revoke over 64 KB"),
        # Streamed, the 64 KB cap on one form field trips before the 1 MB body cap.
        pytest.param("/login", 1024 * 1024 + 1, {413, 400}, id="login over 1 MB"),
        pytest.param("/login", 200 * 1024, {400}, id="login form field over 64 KB"),
    ],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_caps_413(client, path, size, expected, chunked):
    body = b"a=" + b"x" * (size - 2)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if path == "/register":
        headers["Content-Type"] = "application/json"

    async def stream():
        for i in range(0, len(body), 16384):
            yield body[i : i + 16384]

    response = await client.post(path, content=stream() if chunked else body, headers=headers)
    assert response.status_code in expected, response.text[:200]
    assert response.json()["error"] == "invalid_request"
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"max_body_protocol": 256 * 1024}])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_protocol_body_cap_is_the_setting(client, chunked):
    """OSTIARY_MAX_BODY_PROTOCOL is the cap of the protocol endpoints: a 100 KiB registration is
    under a 256 KiB setting (refused for its content, never with 413), 300 KiB is over it."""
    filler = {
        "redirect_uris": ["http://127.0.0.1:9876/callback"],
        "client_name": "Big",
        "software_statement_note": "x" * 100 * 1024,
    }
    body = json.dumps(filler).encode()

    async def stream(data: bytes):
        for i in range(0, len(data), 16384):
            yield data[i : i + 16384]

    headers = {"Content-Type": "application/json"}
    response = await client.post("/register", content=stream(body) if chunked else body, headers=headers)
    assert response.status_code == 201, response.text[:200]
    big = json.dumps({**filler, "software_statement_note": "x" * 300 * 1024}).encode()
    response = await client.post("/register", content=stream(big) if chunked else big, headers=headers)
    assert response.status_code == 413
    assert "262144 bytes" in response.json()["error_description"]


async def test_header_and_uri_caps(client):
    big = {f"X-Filler-{i}": "y" * 200 for i in range(100)}
    assert (await client.get("/jwks", headers=big)).status_code == 431
    assert (await client.get("/authorize", params={"state": "s" * 9000})).status_code == 414
    assert (await client.get("/jwks")).status_code == 200


@pytest.mark.parametrize("path", ["/token", "/register", "/revoke"])
async def test_cors_open_without_credentials_on_browser_client_endpoints(client, path):
    """Browser-based MCP clients call these cross-origin, sending MCP-Protocol-Version."""
    preflight = await client.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "mcp-protocol-version",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "MCP-Protocol-Version" in preflight.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in preflight.headers
    response = await client.post(path, data={}, headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("path", ["/admin", "/admin/users", "/authorize", "/consent/x", "/introspect"])
async def test_no_cors_on_pages_admin_or_introspection(client, path):
    preflight = await client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    response = await client.get(path, headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers


async def test_every_response_has_a_request_id(client, runtime):
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"])
    for response in [
        await client.get("/jwks"),
        await client.post("/token", data={"grant_type": "nope"}),
        await client.get("/nowhere"),
        await client.get("/jwks", headers={"Host": "evil.example"}),
        await client.post("/register", json={"redirect_uris": ["http://127.0.0.1:9/cb"]}),
    ]:
        assert len(response.headers["x-request-id"]) >= 16
    echoed = await client.get("/jwks", headers={"X-Request-Id": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    forged = await client.get("/jwks", headers={"X-Request-Id": "bad\x7fid" + "x" * 100})
    assert forged.headers["x-request-id"] != "bad"


def _post_oversized(port: int, size: int, host: str) -> bytes:
    """POST /register with a body of `size` bytes sent in full, then read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST /register HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
        sock.sendall(head + b" " * size)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_an_oversized_body_gets_its_413_not_a_reset(settings):
    """RFC 9110 §15.5.14 / RFC 9112 §9.6: the server refuses a 2 MiB registration before using
    it, but reads (a bounded amount of) what the client is sending before it closes, so that
    the client reads the 413 instead of a TCP reset caused by unread data (lingering close)."""
    with UvicornServer(settings) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        for _ in range(10):
            answer = _post_oversized(port, 2 * 1024 * 1024, settings.issuer.split("//", 1)[1])
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b"invalid_request" in answer
        # Any refusal before the app runs, here a Host that is not ours (421), drains the same way.
        answer = _post_oversized(port, 512 * 1024, "elsewhere.example")
        assert answer.startswith(b"HTTP/1.1 421"), answer[:200]
