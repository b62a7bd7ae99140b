"""End to end with the official MCP TypeScript SDK v2 (`@modelcontextprotocol/client` 2.4.0),
pinned to MCP 2026-07-28, through the browser authorization flow.

Real processes: `ostiary serve` (set up with the real CLI, trusting a local https server that
serves Client ID Metadata Documents with a test CA; access tokens live 30 s and the refresh grace
window is 0 s), the example MCP server, and the node script tests/node/v2_client_flow.mjs: the v2
`Client` and `StreamableHTTPClientTransport` with an `OAuthClientProvider`, the browser step in
headless Chromium (playwright-core), a real user signing in and consenting. The script gets the
401, lets the SDK discover Ostiary (RFC 9728 -> RFC 8414) and identify itself by its metadata
document URL or by dynamic registration (RFC 7591), finishes the authorization with the
callback's parameters (the SDK checks RFC 9207's `iss`), steps up on 403 insufficient_scope,
waits until the access token has expired and lets the SDK refresh it; it prints a JSON summary
that these tests assert on. tests/e2e/test_mcp_ts_sdk.py runs the 1.32.2 SDK (2025-11-25).

What the v2 SDK does on its own, read from its source (dist/public-*.mjs, dist/index.mjs):
`determineScope` adds `offline_access` (listed in Ostiary's `scopes_supported`) and then
`startAuthorization` sends `prompt=consent`; the transport's step-up (`_stepUpAuthorize`) asks
for the union of the scopes it asked for before, the token's scope and the challenge's, and
forces a new authorization request when that union is wider than the token's scope. It never
looks at `expires_in`: a refresh happens only when the MCP server answers 401 (`onUnauthorized`
-> `auth()` -> `refreshAuthorization`), which is why the script waits for the real expiry.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.cimd_stack import CimdStack, cimd_stack
from tests.support import PASSWORD, ROOT, USERNAME, clean_env, free_port, sql, unavailable

pytestmark = pytest.mark.slow

NODE_DIR = ROOT / "tests" / "node"
FLOW = NODE_DIR / "v2_client_flow.mjs"
CLIENT_NAME = "Ostiary e2e (MCP TypeScript SDK v2)"  # as in v2_client_flow.mjs
PROTOCOL_VERSION = "2026-07-28"
TOKEN_TTL = 30  # the shortest access-token lifetime Ostiary allows: the script waits it out
FIRST_SCOPES = {"mcp:read", "offline_access"}  # the 401's scope, plus offline_access (the SDK adds it)


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        unavailable("node is missing")
    for package in ("@modelcontextprotocol/client", "playwright-core"):
        if not (NODE_DIR / "node_modules" / package / "package.json").exists():
            unavailable(f"tests/node/node_modules/{package} is missing (run `npm ci` in tests/node)")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[CimdStack]:
    # Grace window 0: a rotated refresh token presented again a second later is reuse.
    with cimd_stack(
        tmp_path_factory.mktemp("ts-sdk-v2"), username=USERNAME, password=PASSWORD,
        access_token_ttl=str(TOKEN_TTL), refresh_grace_period="0",
    ) as stack:  # fmt: skip
        yield stack


def run_flow(node: str, stack: CimdStack, mode: str, callback_port: int, metadata_url: str | None = None) -> dict:
    """Run the node client once; its JSON summary, or a failed test with what it and the servers said."""
    argv = [node, str(FLOW), f"--server-url={stack.mcp_url}", f"--mode={mode}", f"--callback-port={callback_port}"]
    if metadata_url:
        argv.append(f"--client-metadata-url={metadata_url}")
    try:
        done = subprocess.run(
            argv, cwd=NODE_DIR, env=clean_env(E2E_PASSWORD=PASSWORD), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the node client did not finish in 120 s:\n{exc.stderr}\n{stack.logs()}")
    if done.returncode != 0:
        pytest.fail(f"the node client failed ({done.returncode}):\n{done.stderr[-4000:]}\n{stack.logs()}")
    lines = done.stdout.strip().splitlines()
    assert lines, f"the node client printed no summary:\n{done.stderr}"
    return json.loads(lines[-1])


def requests_to(summary: dict, method: str, url: str) -> list[dict]:
    return [e for e in summary["trace"] if e.get("method") == method and e.get("url") == url]


def authorization_params(consent: dict) -> dict[str, list[str]]:
    """The query of the first URL the browser was sent to for this consent: the SDK's /authorize."""
    return parse_qs(urlsplit(consent["first_request"]).query)


def scopes_by_status(consent: dict) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {"new": [], "granted": []}
    for scope, status in consent["scopes"]:
        seen[status].append(scope)
    return seen


def audit_count(stack: CimdStack, event: str) -> int:
    return sql(stack.database_url, "SELECT count(*) FROM audit_events WHERE event = :e", e=event)[0][0]


def refresh_at(stack: CimdStack, client_id: str, refresh_token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id, "resource": stack.mcp_url}
    return httpx.post(f"{stack.issuer}/token", data=data, timeout=10)


# -- what both ways of identifying the client share ---------------------------------------------


def assert_mcp_2026_07_28_and_discovery(summary: dict, stack: CimdStack) -> None:
    """MCP 2026-07-28: the client negotiated the modern era (server/discover) and sent the
    standard `MCP-Protocol-Version` and `Mcp-Method` headers on every request (SEP-2243); the
    first request was refused with a challenge naming the PRM and the scope (RFC 9728 §5.1), and
    the SDK found Ostiary through RFC 9728 and RFC 8414, checking the issuer (RFC 8414 §3.3)."""
    trace = summary["trace"]
    assert not [e for e in trace if "invalidated" in e], f"the SDK dropped credentials: {trace}"
    assert (summary["protocol_era"], summary["protocol_version"]) == ("modern", PROTOCOL_VERSION)
    mcp = [e for e in trace if e.get("url") == stack.mcp_url]
    assert mcp and all(e["mcp_protocol_version"] == PROTOCOL_VERSION and e["mcp_method"] for e in mcp), mcp
    assert {e["mcp_method"] for e in mcp} >= {"server/discover", "tools/list", "tools/call"}

    first = mcp[0]
    assert (first["mcp_method"], first["status"], first["bearer"]) == ("server/discover", 401, False), first
    assert "resource_metadata=" in first["www_authenticate"] and 'scope="mcp:read"' in first["www_authenticate"]
    prm = [e for e in trace if "/.well-known/oauth-protected-resource" in e.get("url", "")]
    assert prm and prm[0]["status"] == 200, trace
    as_metadata = requests_to(summary, "GET", f"{stack.issuer}/.well-known/oauth-authorization-server")
    assert as_metadata and as_metadata[0]["status"] == 200, trace
    assert summary["issuer"] == stack.issuer
    assert summary["iss_parameter_supported"] is True


def assert_first_authorization(summary: dict, stack: CimdStack, callback_port: int) -> None:
    """The first authorization request (OAuth 2.1 §4.1.1 PKCE S256, RFC 8707 resource, RFC 8252
    §7.3 loopback redirect), its consent page (sign-in, then mcp:read), the RFC 9207 `iss` on the
    redirect, and a token for the MCP server (RFC 9068, aud = the resource) that reads notes."""
    assert len(summary["authorizations"]) == 2  # this one and the step-up, nothing else
    first_consent = summary["consents"][0]
    assert first_consent["first_request"] == summary["authorizations"][0]
    params = authorization_params(first_consent)
    assert urlsplit(first_consent["first_request"])._replace(query="").geturl() == f"{stack.issuer}/authorize"
    assert params["code_challenge_method"] == ["S256"] and params["code_challenge"]
    assert params["resource"] == [stack.mcp_url]
    assert params["redirect_uri"] == [f"http://127.0.0.1:{callback_port}/callback"]
    assert params["client_id"] == [summary["client_id"]]
    assert set(params["scope"][0].split()) == FIRST_SCOPES
    assert params["prompt"] == ["consent"]  # the SDK's rule whenever it asks for offline_access

    assert first_consent["signed_in"]
    assert scopes_by_status(first_consent) == {"new": ["mcp:read", "offline_access"], "granted": []}
    assert "Notes" in first_consent["text"] and USERNAME in first_consent["text"]

    # RFC 9207: every redirect carried the issuer, and the SDK (which checks it in finishAuth)
    # accepted it; the codes were redeemed as a public client with the resource (RFC 8707 §2.2).
    assert summary["callbacks"] == [{"iss": stack.issuer, "has_code": True, "state_ok": True, "error": None}] * 2
    exchanges = [e for e in requests_to(summary, "POST", f"{stack.issuer}/token") if e["grant_type"] == "authorization_code"]
    assert len(exchanges) == 2 and all(e["status"] == 200 for e in exchanges), exchanges
    assert all(e["resource"] == stack.mcp_url and "client_secret" not in e["form_keys"] for e in exchanges)

    tokens = summary["tokens"]["first"]
    claims = tokens["claims"]
    assert claims["aud"] in (stack.mcp_url, [stack.mcp_url]), claims
    assert claims["iss"] == stack.issuer and claims["client_id"] == summary["client_id"] and claims["sub"]
    assert set(claims["scope"].split()) == FIRST_SCOPES
    assert tokens["token_type"].lower() == "bearer" and tokens["refresh_token"]
    assert tokens["expires_in"] == TOKEN_TTL

    assert summary["tools"] == ["add_note", "list_notes"]
    first_list = summary["tool_results"]["first_list"]  # alice's notes (the module's tests share them)
    assert first_list["is_error"] is False and isinstance(first_list["structured"]["result"], list), first_list


def assert_step_up(summary: dict, stack: CimdStack) -> None:
    """MCP 2026-07-28 authorization, Step-Up Authorization Flow: the write tool gets 403
    `insufficient_scope` with the scope to ask for (RFC 6750 §3.1); the SDK re-authorizes under
    the same client_id asking for the union of what it had and what was challenged; Ostiary's
    consent page asks only for the scope not consented before (the rest is listed as already
    allowed); the new token carries both and the retried call succeeds."""
    trace = summary["trace"]
    denied = [e for e in trace if e.get("url") == stack.mcp_url and e["status"] == 403]
    assert len(denied) == 1 and denied[0]["mcp_method"] == "tools/call", denied
    assert 'error="insufficient_scope"' in denied[0]["www_authenticate"]
    challenged = re.search(r'scope="([^"]*)"', denied[0]["www_authenticate"])
    assert challenged and "mcp:write" in challenged.group(1).split(), denied[0]
    assert summary["step_up_error"] == "UnauthorizedError"  # the transport handed the redirect to the app

    second_consent = summary["consents"][1]
    assert second_consent["first_request"] == summary["authorizations"][1]
    params = authorization_params(second_consent)
    # The union of the SDK's earlier request (mcp:read offline_access) and the challenge.
    assert set(params["scope"][0].split()) == FIRST_SCOPES | {"mcp:write"}, params["scope"]
    assert params["client_id"] == [summary["client_id"]] and params["resource"] == [stack.mcp_url]

    # The same browser session: no sign-in, and only mcp:write is asked for.
    assert not second_consent["signed_in"]
    assert scopes_by_status(second_consent) == {"new": ["mcp:write"], "granted": ["mcp:read", "offline_access"]}
    asked = second_consent["text"].split("It asks for", 1)[1].split("Already allowed", 1)[0]
    assert "mcp:write" in asked and "mcp:read" not in asked and "offline_access" not in asked, second_consent["text"]

    stepped_up = summary["tokens"]["step_up"]
    assert set(stepped_up["claims"]["scope"].split()) == FIRST_SCOPES | {"mcp:write"}
    assert stepped_up["claims"]["client_id"] == summary["client_id"]
    results = summary["tool_results"]
    assert results["added"]["is_error"] is False, results["added"]
    assert results["second_list"]["is_error"] is False, results["second_list"]
    notes_before = results["first_list"]["structured"]["result"]
    assert results["second_list"]["structured"] == {"result": [*notes_before, "buy milk"]}, results["second_list"]


def assert_refreshed_and_rotated(summary: dict, stack: CimdStack, reuse_before: int) -> None:
    """OAuth 2.1 §4.3 / RFC 6749 §6: once the access token has expired (the MCP server answers
    401 `invalid_token`, RFC 6750 §3.1), the SDK redeems its refresh token (with the resource,
    RFC 8707 §2.2, and no scope: the granted scope is kept, OAuth 2.1 §4.3.1) without a new
    authorization; Ostiary rotates the refresh token (OAuth 2.1 §4.3.1), the new access token
    works, and the rotated-away token presented again after the grace window is refused as reuse,
    which revokes the consent's refresh tokens (RFC 9700 §4.14.2)."""
    stepped_up, refreshed = summary["tokens"]["step_up"], summary["tokens"]["refreshed"]
    assert summary["expired_probe"]["status"] == 401, summary["expired_probe"]
    assert 'error="invalid_token"' in summary["expired_probe"]["www_authenticate"]

    mcp_401, token_request, *retried = summary["refresh_trace"]
    assert (mcp_401["url"], mcp_401["status"], mcp_401["bearer"]) == (stack.mcp_url, 401, True), mcp_401
    assert token_request["url"] == f"{stack.issuer}/token" and token_request["status"] == 200, token_request
    assert token_request["grant_type"] == "refresh_token"
    assert token_request["form_keys"] == ["client_id", "grant_type", "refresh_token", "resource"]
    assert token_request["resource"] == stack.mcp_url
    assert retried and all(e["url"] == stack.mcp_url and e["status"] == 200 for e in retried), retried
    assert len(summary["authorizations"]) == 2 and len(summary["consents"]) == 2  # no browser

    assert refreshed["access_token"] != stepped_up["access_token"]
    assert refreshed["refresh_token"] and refreshed["refresh_token"] != stepped_up["refresh_token"]  # rotated
    assert refreshed["claims"]["exp"] > stepped_up["claims"]["exp"]
    assert set(refreshed["claims"]["scope"].split()) == FIRST_SCOPES | {"mcp:write"}
    assert refreshed["claims"]["aud"] in (stack.mcp_url, [stack.mcp_url])
    results = summary["tool_results"]
    assert results["after_refresh_list"] == results["second_list"], results["after_refresh_list"]
    assert results["after_refresh_add"]["is_error"] is False, results["after_refresh_add"]  # write works too

    # The rotated-away refresh token, after the grace window (0 s; the server counts whole
    # seconds): reuse. Every refresh token of the consent is revoked, the current one included.
    time.sleep(max(0.0, summary["refreshed_at_ms"] / 1000 + 1.1 - time.time()))
    replay = refresh_at(stack, summary["client_id"], stepped_up["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant", replay.text
    current = refresh_at(stack, summary["client_id"], refreshed["refresh_token"])
    assert current.status_code == 400 and current.json()["error"] == "invalid_grant", current.text
    assert audit_count(stack, "token.reuse_detected") == reuse_before + 1


# -- the tests ---------------------------------------------------------------------------------


def test_ts_sdk_v2_client_id_metadata_document_step_up_and_refresh(node, chromium, stack: CimdStack):
    """MCP 2026-07-28 authorization, client registration by Client ID Metadata Document (its
    preferred way; draft-ietf-oauth-client-id-metadata-document): Ostiary advertises
    client_id_metadata_document_supported, so the SDK uses its https URL as client_id and never
    registers; Ostiary fetches the document over TLS once and shows its host on the consent page.
    Then the step-up (assert_step_up) and the refresh with rotation (assert_refreshed_and_rotated)."""
    callback_port = free_port()
    callback = f"http://127.0.0.1:{callback_port}/callback"
    metadata_url = stack.documents.publish(
        "/ts-sdk-v2/client.json", client_name=CLIENT_NAME, redirect_uris=[callback], application_type="native"
    )
    fetched_before = list(stack.documents.requests)
    reuse_before = audit_count(stack, "token.reuse_detected")
    summary = run_flow(node, stack, "cimd", callback_port, metadata_url)

    assert_mcp_2026_07_28_and_discovery(summary, stack)
    assert summary["client_id_metadata_document_supported"] is True
    assert summary["client_id"] == metadata_url
    assert not [e for e in summary["trace"] if e.get("url", "").endswith("/register")], "registered despite CIMD"
    # The SDK saved the URL as its client information, stamped with the issuer (SEP-2352).
    assert summary["registered"] == [
        {"client_id": metadata_url, "has_secret": False, "redirect_uris": None,
         "token_endpoint_auth_method": None, "application_type": None, "issuer": stack.issuer}
    ]  # fmt: skip
    # Fetched once for two authorizations, two code exchanges and a refresh (cached).
    assert stack.documents.requests[len(fetched_before) :] == ["/ts-sdk-v2/client.json"]

    assert_first_authorization(summary, stack, callback_port)
    host = urlsplit(metadata_url).netloc
    for consent in summary["consents"]:
        assert consent["client_host"] == [host], consent
        assert CLIENT_NAME in consent["text"]
        assert any("localhost" in notice for notice in consent["notices"]), consent
    assert_step_up(summary, stack)
    assert_refreshed_and_rotated(summary, stack, reuse_before)


def test_ts_sdk_v2_rfc7591_dynamic_registration_step_up_and_refresh(node, chromium, stack: CimdStack):
    """RFC 7591 dynamic registration, which MCP 2026-07-28 deprecates but still allows for
    clients without a metadata document: the SDK registers a public client with the
    `application_type` it derives from its loopback redirect URI (`native`, SEP-837 / OIDC DCR
    §2); Ostiary answers 201 echoing the metadata (RFC 7591 §3.2.1). Then the step-up
    (assert_step_up) and the refresh with rotation (assert_refreshed_and_rotated)."""
    callback_port = free_port()
    fetched_before = list(stack.documents.requests)
    reuse_before = audit_count(stack, "token.reuse_detected")
    summary = run_flow(node, stack, "dcr", callback_port)

    assert_mcp_2026_07_28_and_discovery(summary, stack)
    [registration] = requests_to(summary, "POST", f"{stack.issuer}/register")
    assert registration["status"] == 201
    sent = registration["json"]
    assert sent["application_type"] == "native"
    assert sent["redirect_uris"] == [f"http://127.0.0.1:{callback_port}/callback"]
    assert sent["grant_types"] == ["authorization_code", "refresh_token"]
    assert set(sent["scope"].split()) == FIRST_SCOPES  # informational: Ostiary does not cap requests by it
    [registered] = summary["registered"]
    assert registered == {
        "client_id": summary["client_id"], "has_secret": False,
        "redirect_uris": [f"http://127.0.0.1:{callback_port}/callback"],
        "token_endpoint_auth_method": "none", "application_type": "native", "issuer": stack.issuer,
    }  # fmt: skip
    assert not summary["client_id"].startswith("https://")
    assert stack.documents.requests == fetched_before  # no metadata document involved

    assert_first_authorization(summary, stack, callback_port)
    for consent in summary["consents"]:
        assert consent["client_host"] == [], consent  # a registered client's name is unverified
        assert "unverified" in consent["text"]
    assert_step_up(summary, stack)
    assert_refreshed_and_rotated(summary, stack, reuse_before)
