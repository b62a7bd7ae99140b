"""The example MCP server (examples/mcp_server/) as resource servers should behave: the MCP
Streamable HTTP transport's Origin rule comes before any token check, a request without a
token gets the RFC 9728 / RFC 6750 challenge, a request whose `Mcp-Method`/`Mcp-Name` headers
contradict its body gets the SDK's 400 before any scope challenge, and a scope counts with the
scopes it includes, as Ostiary publishes them (MCP 2026-07-28 authorization, Step-Up
Authorization Flow; docs/decisions.md#scope-hierarchy)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from app.main import create_app
from app.services import resources as resource_service
from app.services.resources import ScopeSpec
from tests.support import (
    REDIRECT,
    ROOT,
    DPoPClient,
    create_user,
    free_port,
    login,
    make_settings,
    obtain_code,
    register,
    tokens_for,
)

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:8001/mcp"
EXAMPLE = ROOT / "examples" / "mcp_server"
MODERN = "2026-07-28"  # MCP revision whose requests carry Mcp-Method / Mcp-Name
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


@contextmanager
def example_modules() -> Iterator[SimpleNamespace]:
    """examples/mcp_server/server.py and ostiary_auth.py, imported as an operator runs them."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import ostiary_auth
        import server

        yield SimpleNamespace(server=server, auth=ostiary_auth)
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in ("server", "ostiary_auth"):  # plain module names: leave no trace for other tests
            sys.modules.pop(name, None)


@pytest.fixture
def app():
    with example_modules() as example:
        yield example.server.build_app(issuer="http://127.0.0.1:8000", url=URL, read_scope="mcp:read", write_scope="mcp:write")


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


# -- with a real Ostiary: scope hierarchies and the Mcp-Name rule ------------------------------


@contextmanager
def serving(settings, port: int):
    """The real Ostiary under uvicorn on 127.0.0.1:`port` (its issuer), in a thread: the
    example's verifier fetches the metadata, the JWKS and the scope hierarchy from it."""
    app = create_app(settings, run_jobs=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield app.state.runtime
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.runtime.engine.dispose()


@asynccontextmanager
async def running(app):
    """An MCP server app with its lifespan (the SDK's session manager) running."""
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def stack(clean_db):
    """Ostiary with user alice signed in in `browser` and a registered client, and the example
    server built against it; `notes(implies)` registers the example as an MCP server whose
    scopes include what `implies` says."""
    port = free_port()
    settings = make_settings(clean_db, issuer=f"http://127.0.0.1:{port}")
    with serving(settings, port) as runtime, example_modules() as example:
        create_user(runtime)

        def notes(implies: dict[str, tuple[str, ...]]) -> None:
            scopes = [
                ScopeSpec("mcp:read", "Read your notes", is_default=True, implies=implies.get("mcp:read", ())),
                ScopeSpec("mcp:write", "Add notes", implies=implies.get("mcp:write", ())),
            ]
            with runtime.sessions() as db:
                resource_service.create(db, resource_service.check(URL, "Notes", None, scopes), via="cli")
                db.commit()

        async with httpx.AsyncClient(base_url=settings.issuer) as browser:
            reg = await register(browser)
            assert (await login(browser)).status_code == 303

            async def token(scope: str) -> str:
                return (await tokens_for(browser, reg["client_id"], scope=scope, resource=URL))["access_token"]

            async def dpop_tokens(key: DPoPClient, scope: str = "mcp:read", refresh_token: str | None = None) -> dict:
                """Tokens bound to `key` (RFC 9449 §5): from a new code, or by refreshing."""
                if refresh_token is None:
                    code, verifier, _ = await obtain_code(browser, reg["client_id"], scope=scope, resource=URL)
                    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT}
                else:
                    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
                proof = key.proof(htu=settings.issuer + "/token")
                response = await browser.post("/token", data={**data, "client_id": reg["client_id"]}, headers={"DPoP": proof})
                assert response.status_code == 200, response.text
                assert response.json()["token_type"] == "DPoP"
                return response.json()

            app = example.server.build_app(issuer=settings.issuer, url=URL, read_scope="mcp:read", write_scope="mcp:write")
            async with running(app):
                yield SimpleNamespace(
                    app=app, notes=notes, token=token, dpop_tokens=dpop_tokens, issuer=settings.issuer, example=example
                )


def tool_call(name: str) -> dict:
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": {}, "_meta": META}}


def routing(method: str, name: str | None = None, version: str | None = MODERN) -> dict:
    """The headers a 2026-07-28 client sends (MCP Streamable HTTP, Standard Request Headers)."""
    headers = {"Mcp-Method": method, **({"Mcp-Name": name} if name else {})}
    return {**headers, **({"MCP-Protocol-Version": version} if version else {})}


async def send(app, body: dict, headers: dict, token: str | None = None) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8001") as client:
        return await client.post("/mcp", json=body, headers={"Accept": "application/json, text/event-stream", **auth, **headers})


async def test_a_scope_counts_with_the_scopes_it_includes(stack):
    """MCP 2026-07-28 authorization (Step-Up Authorization Flow): servers MUST account for scope
    hierarchies. Ostiary says mcp:write includes mcp:read: a token holding only mcp:write may
    call the tool that needs mcp:read, and the SDK's own required_scopes check agrees."""
    stack.notes({"mcp:write": ("mcp:read",)})
    token = await stack.token("mcp:write")
    response = await send(stack.app, tool_call("list_notes"), routing("tools/call", "list_notes"), token)
    assert response.status_code == 200, response.text
    assert "error" not in response.json() and response.json()["result"]["isError"] is False


async def test_without_a_hierarchy_the_challenge_is_unchanged(stack):
    """Nothing included: mcp:write alone lacks mcp:read, and the 403 insufficient_scope names
    what to ask for (RFC 6750 §3.1)."""
    stack.notes({})
    token = await stack.token("mcp:write")
    response = await send(stack.app, tool_call("list_notes"), routing("tools/call", "list_notes"), token)
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp:read mcp:write"' in challenge


async def test_the_published_hierarchy_wins_over_the_configured_one(stack):
    """docs/decisions.md#scope-hierarchy: the configured mapping is a fallback, for while
    Ostiary cannot be read; what Ostiary publishes decides."""
    stack.notes({})
    configured = {"mcp:write": ["mcp:read"]}
    published = stack.example.auth.ScopeHierarchy(stack.issuer, URL, configured)
    assert await published.effective({"mcp:write"}) == {"mcp:write"}
    unreachable = stack.example.auth.ScopeHierarchy(f"http://127.0.0.1:{free_port()}", URL, configured)
    assert await unreachable.effective({"mcp:write"}) == {"mcp:write", "mcp:read"}
    unregistered = stack.example.auth.ScopeHierarchy(stack.issuer, "http://127.0.0.1:8002/mcp", configured)
    assert await unregistered.effective({"mcp:write"}) == {"mcp:write", "mcp:read"}


async def sdk_answer(body: dict, headers: dict) -> httpx.Response:
    """What the MCP SDK itself answers, with no authorization in front of it."""
    from mcp.server import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings

    plain = MCPServer("Notes")

    @plain.tool()
    def list_notes() -> list[str]:
        return []

    @plain.tool()
    def add_note(text: str = "") -> str:
        return "saved"

    security = TransportSecuritySettings(allowed_hosts=["127.0.0.1:8001"], allowed_origins=["http://127.0.0.1:8001"])
    app = plain.streamable_http_app(streamable_http_path="/mcp", transport_security=security)
    async with running(app):
        return await send(app, body, headers)


@pytest.mark.parametrize(
    "body, headers",
    [
        pytest.param(tool_call("add_note"), routing("tools/call", "list_notes"), id="Mcp-Name names another tool"),
        pytest.param(tool_call("add_note"), routing("tools/call"), id="Mcp-Name missing"),
        pytest.param(tool_call("add_note"), routing("tools/list", "add_note"), id="Mcp-Method names another method"),
        pytest.param(
            tool_call("add_note"),
            {**routing("tools/call", "add_note"), "MCP-Protocol-Version": "2025-99-99"},
            id="an unsupported protocol version",
        ),
    ],
)
async def test_a_header_that_contradicts_the_body_is_the_sdks_400_before_any_challenge(stack, body, headers):
    """MCP Streamable HTTP (2026-07-28), Server Validation: 400 and a JSON-RPC HeaderMismatch
    error, exactly as the SDK answers it, and not a 403 insufficient_scope worked out from a
    body the headers contradict (the token lacks mcp:write, which add_note needs)."""
    stack.notes({})
    token = await stack.token("mcp:read")
    response = await send(stack.app, body, headers, token)
    expected = await sdk_answer(body, headers)
    assert expected.status_code == 400
    assert (response.status_code, response.content) == (expected.status_code, expected.content)
    assert "www-authenticate" not in response.headers


async def test_a_duplicated_routing_header_is_the_sdks_400(stack):
    """Two Mcp-Name headers: first-copy and last-copy readers would disagree."""
    stack.notes({})
    token = await stack.token("mcp:read")
    raw = [("Mcp-Name", "list_notes"), ("Mcp-Name", "add_note"), ("Mcp-Method", "tools/call"), ("MCP-Protocol-Version", MODERN)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.app), base_url="http://127.0.0.1:8001") as client:
        headers = httpx.Headers([("Accept", "application/json, text/event-stream"), ("Authorization", f"Bearer {token}"), *raw])
        response = await client.post("/mcp", json=tool_call("add_note"), headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == {"code": -32020, "message": "mcp-name header appears more than once"}


async def test_agreeing_headers_still_get_the_scope_challenge(stack):
    """The headers agree with the body: the tool's scope decides, 403 insufficient_scope."""
    stack.notes({})
    token = await stack.token("mcp:read")
    response = await send(stack.app, tool_call("add_note"), routing("tools/call", "add_note"), token)
    assert response.status_code == 403
    assert 'scope="mcp:read mcp:write"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("version", [pytest.param("2025-11-25", id="2025-11-25"), pytest.param(None, id="no version header")])
async def test_older_revisions_are_judged_by_their_body(stack, version):
    """Before 2026-07-28 requests carry no Mcp-Name to agree with and the SDK does not compare
    one: the body's tool decides the scope, as the SDK runs the body's tool."""
    stack.notes({})
    token = await stack.token("mcp:read")
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "add_note", "arguments": {}}}
    response = await send(stack.app, body, routing("tools/call", "list_notes", version), token)
    assert response.status_code == 403
    assert 'scope="mcp:read mcp:write"' in response.headers["www-authenticate"]


# -- DPoP-bound tokens (RFC 9449 §7) -------------------------------------------------------------

MCP_CALL = ("tools/call", "list_notes")


async def dpop_send(app, token: str, proof: str | None, scheme: str = "DPoP") -> httpx.Response:
    headers = {"Authorization": f"{scheme} {token}", **({"DPoP": proof} if proof else {})}
    return await send(app, tool_call("list_notes"), {**routing(*MCP_CALL), **headers})


async def test_dpop_bound_tokens_are_issued_refreshed_and_verified(stack):
    """RFC 9449 §7.1: the DPoP scheme with a proof of the token's key (`cnf.jkt`) naming this
    request (`htm`, `htu`) and this token (`ath`) is accepted, also after a refresh with the same
    key (§5); the protected-resource metadata lists the proof algorithms (RFC 9728 §2)."""
    stack.notes({})
    key = DPoPClient()
    tokens = await stack.dpop_tokens(key)
    proof = key.proof("POST", URL, access_token=tokens["access_token"])
    response = await dpop_send(stack.app, tokens["access_token"], proof)
    assert response.status_code == 200, response.text
    refreshed = await stack.dpop_tokens(key, refresh_token=tokens["refresh_token"])
    again = await dpop_send(stack.app, refreshed["access_token"], key.proof("POST", URL, access_token=refreshed["access_token"]))
    assert again.status_code == 200, again.text
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.app), base_url="http://127.0.0.1:8001") as client:
        prm = (await client.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert "ES256" in prm["dpop_signing_alg_values_supported"]


@pytest.mark.parametrize(
    "case",
    ["as-bearer", "no-proof", "another-key", "wrong-ath", "wrong-htu", "wrong-htm", "replayed", "stale"],
)
async def test_hostile_dpop_use_is_refused(stack, case):
    """RFC 9449 §7.1: a DPoP-bound token is never a bearer token, and a proof that is missing,
    of another key, for another token (`ath`), request (`htu`, `htm`) or time (`iat`), or
    replayed (`jti`) is 401 with a DPoP challenge; the tool never runs."""
    stack.notes({})
    key = DPoPClient()
    token = (await stack.dpop_tokens(key))["access_token"]
    good = key.proof("POST", URL, access_token=token)
    if case == "as-bearer":
        response = await dpop_send(stack.app, token, None, scheme="Bearer")
        assert response.status_code == 401 and 'error="invalid_token"' in response.headers["www-authenticate"]
        return
    proof = {
        "no-proof": None,
        "another-key": DPoPClient().proof("POST", URL, access_token=token),
        "wrong-ath": key.proof("POST", URL, access_token=token + "x"),
        "wrong-htu": key.proof("POST", "http://127.0.0.1:8001/other", access_token=token),
        "wrong-htm": key.proof("GET", URL, access_token=token),
        "replayed": good,
        "stale": key.proof("POST", URL, access_token=token, iat=int(time.time()) - 3600),
    }[case]
    if case == "replayed":
        assert (await dpop_send(stack.app, token, good)).status_code == 200
    response = await dpop_send(stack.app, token, proof)
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP ") and 'error="invalid_dpop_proof"' in challenge and "algs=" in challenge
    assert "resource_metadata=" in challenge


async def test_dpop_requests_are_challenged_with_the_dpop_scheme(stack):
    """RFC 9449 §7.1: a request made with the DPoP scheme is challenged with it: a token that is
    not valid is `invalid_token` (a new proof would not help), and a tool whose scope the token
    lacks is 403 `insufficient_scope` under `DPoP`, naming the proof algorithms."""
    stack.notes({})
    key = DPoPClient()
    token = (await stack.dpop_tokens(key))["access_token"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = await dpop_send(stack.app, forged, key.proof("POST", URL, access_token=forged))
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"].startswith('DPoP error="invalid_token"')
    headers = {"Authorization": f"DPoP {token}", "DPoP": key.proof("POST", URL, access_token=token)}
    response = await send(stack.app, tool_call("add_note"), {**routing("tools/call", "add_note"), **headers})
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('DPoP error="insufficient_scope"') and "algs=" in challenge and "mcp:write" in challenge
