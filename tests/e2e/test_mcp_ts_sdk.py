"""End to end with the official MCP TypeScript SDK client.

Real processes: `ostiary serve` (set up with the real CLI, trusting a local https server that
serves Client ID Metadata Documents with a test CA), the example MCP server, and the node script
tests/node/mcp_client_flow.mjs: `@modelcontextprotocol/sdk` 1.32.2's `auth()` through
StreamableHTTPClientTransport, with the browser step in headless Chromium (playwright-core).
The script gets the 401, discovers Ostiary (RFC 9728 -> RFC 8414), identifies itself by dynamic
registration (RFC 7591) or by its metadata document URL (MCP 2025-11-25 client ID metadata
document), signs in and allows on the real pages, finishes auth on its loopback callback
(RFC 8252 §7.3, PKCE, RFC 8707 resource) and lists and calls the tools; it prints a JSON summary
that this test asserts on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.e2e.cimd_stack import CimdStack, cimd_stack
from tests.support import PASSWORD, ROOT, USERNAME, clean_env, free_port, unavailable

pytestmark = pytest.mark.slow

NODE_DIR = ROOT / "tests" / "node"
FLOW = NODE_DIR / "mcp_client_flow.mjs"
CLIENT_NAME = "Ostiary e2e (MCP TypeScript SDK)"  # as in mcp_client_flow.mjs


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        unavailable("node is missing")
    for package in ("@modelcontextprotocol/sdk", "playwright-core"):
        if not (NODE_DIR / "node_modules" / package / "package.json").exists():
            unavailable(f"tests/node/node_modules/{package} is missing (run `npm ci` in tests/node)")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[CimdStack]:
    with cimd_stack(tmp_path_factory.mktemp("ts-sdk"), username=USERNAME, password=PASSWORD) as stack:
        yield stack


def run_flow(node: str, stack: CimdStack, mode: str, callback_port: int, metadata_url: str | None = None) -> dict:
    """Run the node client once; its JSON summary, or a failed test with what it and the servers said."""
    argv = [node, str(FLOW), "--server-url", stack.mcp_url, "--mode", mode, "--callback-port", str(callback_port)]
    if metadata_url:
        argv += ["--client-metadata-url", metadata_url]
    try:
        done = subprocess.run(
            argv, cwd=NODE_DIR, env=clean_env(E2E_PASSWORD=PASSWORD), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the node client did not finish in 60 s:\n{exc.stderr}\n{stack.logs()}")
    if done.returncode != 0:
        pytest.fail(f"the node client failed ({done.returncode}):\n{done.stderr[-4000:]}\n{stack.logs()}")
    lines = done.stdout.strip().splitlines()
    assert lines, f"the node client printed no summary:\n{done.stderr}"
    return json.loads(lines[-1])


def requests_to(summary: dict, method: str, url: str) -> list[dict]:
    return [e for e in summary["trace"] if e.get("method") == method and e.get("url") == url]


def assert_discovered_consented_and_called(summary: dict, stack: CimdStack, callback_port: int) -> None:
    """What every mode shares: 401 -> RFC 9728 -> RFC 8414, sign-in and consent, a token for the
    MCP server (aud = its URL, RFC 8707), and the tools answering."""
    trace = summary["trace"]
    assert not [e for e in trace if "invalidated" in e], f"the SDK dropped credentials: {trace}"

    # The first MCP request is refused with a challenge naming the PRM and the scope (RFC 9728 §5.1).
    first = next(e for e in trace if e.get("url") == stack.mcp_url)
    assert first["status"] == 401, first
    assert "resource_metadata=" in first["www_authenticate"] and 'scope="mcp:read"' in first["www_authenticate"]
    prm = [e for e in trace if "/.well-known/oauth-protected-resource" in e.get("url", "")]
    assert prm and prm[0]["status"] == 200, trace
    as_metadata = requests_to(summary, "GET", f"{stack.issuer}/.well-known/oauth-authorization-server")
    assert as_metadata and as_metadata[0]["status"] == 200, trace
    assert summary["issuer"] == stack.issuer

    # The authorization request: PKCE S256 (OAuth 2.1 §4.1.1), the resource indicator (RFC 8707),
    # the challenged scope, back to the loopback callback.
    [authorization_url] = [e["authorization_url"] for e in trace if "authorization_url" in e]
    assert authorization_url.startswith(f"{stack.issuer}/authorize?")
    params = parse_qs(urlsplit(authorization_url).query)
    assert params["code_challenge_method"] == ["S256"] and params["code_challenge"]
    assert params["resource"] == [stack.mcp_url]
    assert params["scope"] == ["mcp:read"]
    assert params["redirect_uri"] == [f"http://127.0.0.1:{callback_port}/callback"]
    assert params["client_id"] == [summary["client_id"]]

    # The browser: a fresh profile signs in, then the consent page asks for mcp:read alone.
    [consent] = summary["consents"]
    assert consent["signed_in"]
    assert ["mcp:read", "new"] in consent["scopes"]
    assert "mcp:write" not in [scope for scope, _ in consent["scopes"]]
    assert "Notes" in consent["text"] and USERNAME in consent["text"]

    # The redirect reached the loopback callback with the code, the state and RFC 9207's iss.
    assert summary["callback"]["iss"] == stack.issuer
    [token_request] = requests_to(summary, "POST", f"{stack.issuer}/token")
    assert token_request["status"] == 200

    # The token is for the MCP server and for this client, with the scope that was allowed.
    claims = summary["access_token_claims"]
    assert claims["aud"] == stack.mcp_url or claims["aud"] == [stack.mcp_url], claims
    assert claims["iss"] == stack.issuer
    assert claims["client_id"] == summary["client_id"]
    assert claims["sub"]
    assert "mcp:read" in claims["scope"].split() and "mcp:write" not in claims["scope"].split()
    assert summary["tokens"]["token_type"].lower() == "bearer"
    assert "mcp:read" in summary["tokens"]["scope"].split()

    # The MCP server accepts it: the tools, and the read tool's answer (alice has no notes yet).
    assert summary["tools"] == ["add_note", "list_notes"]
    listed = summary["tool_results"]["list_notes"]
    assert listed["is_error"] is False, listed
    assert listed["structured"] == {"result": []}, listed
    mcp_after = [e for e in trace if e.get("url") == stack.mcp_url and e is not first]
    assert mcp_after and all(e["status"] < 400 for e in mcp_after), trace


def test_ts_sdk_rfc7591_dynamic_registration_then_mcp_tools(node, chromium, stack: CimdStack):
    """RFC 7591 dynamic registration (MCP 2025-11-25 keeps it for clients without a metadata
    document): the TS SDK registers itself as a public client, then completes the flow."""
    callback_port = free_port()
    fetched_before = list(stack.documents.requests)
    summary = run_flow(node, stack, "dcr", callback_port)
    assert_discovered_consented_and_called(summary, stack, callback_port)

    [registration] = requests_to(summary, "POST", f"{stack.issuer}/register")
    assert registration["status"] == 201
    [registered] = summary["registered"]
    assert registered["client_id"] == summary["client_id"]
    assert not summary["client_id"].startswith("https://")
    assert registered["has_secret"] is False  # a public client: token_endpoint_auth_method none
    assert registered["token_endpoint_auth_method"] == "none"
    assert registered["redirect_uris"] == [f"http://127.0.0.1:{callback_port}/callback"]  # echoed (RFC 7591 §3.2.1)
    # Ostiary's consent page names no address for a registered client (its name is unverified).
    [consent] = summary["consents"]
    assert consent["client_host"] == []
    assert stack.documents.requests == fetched_before  # no metadata document involved


def test_ts_sdk_mcp_2025_11_25_client_id_metadata_document(node, chromium, stack: CimdStack):
    """MCP 2025-11-25 client ID metadata document: the TS SDK uses its https client_id URL
    (clientMetadataUrl) since Ostiary advertises client_id_metadata_document_supported, never
    registers, and Ostiary fetches the document over TLS and shows its host on the consent page."""
    callback_port = free_port()
    callback = f"http://127.0.0.1:{callback_port}/callback"
    metadata_url = stack.documents.publish("/ts-sdk-cimd/client.json", client_name=CLIENT_NAME, redirect_uris=[callback])
    fetched_before = list(stack.documents.requests)
    summary = run_flow(node, stack, "cimd", callback_port, metadata_url)
    assert_discovered_consented_and_called(summary, stack, callback_port)

    assert summary["client_id_metadata_document_supported"] is True
    assert summary["client_id"] == metadata_url
    assert summary["access_token_claims"]["client_id"] == metadata_url
    assert not [e for e in summary["trace"] if e.get("url", "").endswith("/register")], "registered despite CIMD"
    # Ostiary fetched the document (once: cached for the consent step and /token).
    assert stack.documents.requests[len(fetched_before) :] == ["/ts-sdk-cimd/client.json"]

    # The consent page shows the client_id's host prominently, and warns that every redirect
    # URI is on this computer.
    [consent] = summary["consents"]
    host = urlsplit(metadata_url).netloc
    assert consent["client_host"] == [host], consent
    assert host in consent["text"]
    assert CLIENT_NAME in consent["text"]
    assert any("localhost" in notice for notice in consent["notices"]), consent
