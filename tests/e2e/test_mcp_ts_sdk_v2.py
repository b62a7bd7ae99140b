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

DPoP (RFC 9449), when the provider implements `dpop()` (the script's --dpop): the SDK signs a
proof of that session's key into every token request (`executeTokenRequest`, retrying once on
`use_dpop_nonce`), and the transport wraps its fetch in `withDpopFromProvider`, which sends
`Authorization: DPoP` with a fresh proof (`ath`) only when the saved tokens say `token_type`
DPoP. It does not send `dpop_jkt` with the authorization request (RFC 9449 §10), nor register
`dpop_bound_access_tokens` on its own, nor read `dpop_signing_alg_values_supported` (ES256 by
default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc.jwk import JWKRegistry

from tests.e2e.cimd_stack import CimdStack, cimd_stack
from tests.support import PASSWORD, ROOT, USERNAME, DPoPClient, clean_env, free_port, sql, unavailable

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


def run_flow(
    node: str, stack: CimdStack, mode: str, callback_port: int, metadata_url: str | None = None, *, dpop: bool = False
) -> dict:
    """Run the node client once; its JSON summary, or a failed test with what it and the servers said."""
    argv = [node, str(FLOW), f"--server-url={stack.mcp_url}", f"--mode={mode}", f"--callback-port={callback_port}"]
    if metadata_url:
        argv.append(f"--client-metadata-url={metadata_url}")
    if dpop:
        argv.append("--dpop")
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


def refresh_at(stack: CimdStack, client_id: str, refresh_token: str, dpop: str | None = None) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id, "resource": stack.mcp_url}
    headers = {"DPoP": dpop} if dpop else {}
    return httpx.post(f"{stack.issuer}/token", data=data, headers=headers, timeout=10)


def refresh_rows(stack: CimdStack, client_id: str) -> list[tuple]:
    """The client's refresh tokens in Ostiary's database, oldest first."""
    statement = "SELECT id, parent_id, jkt, used_at, revoked_at FROM refresh_tokens WHERE client_id = :c ORDER BY id"
    return [tuple(row) for row in sql(stack.database_url, statement, c=client_id)]


def ath(access_token: str) -> str:
    """RFC 9449 §4.2: base64url of the SHA-256 of the access token."""
    return base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).rstrip(b"=").decode()


def assert_proof(entry: dict, public_jwk: dict, url: str, access_token: str | None, since: float) -> None:
    """RFC 9449 §4.2: the request's one `DPoP` header is a signed JWT with `typ` dpop+jwt, an
    asymmetric `alg` and the client's public key as `jwk` (no private part), and claims naming
    this request (`htm`, `htu` without query), a recent `iat`, a `jti`, and, with an access token,
    its hash (`ath`); without one, no `ath`."""
    proof = entry.get("dpop")
    assert proof and proof["parts"] == 3, entry
    assert proof["header"] == {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk}, proof
    claims = proof["claims"]
    assert (claims["htm"], claims["htu"]) == (entry["method"], url), claims
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16, claims
    assert since - 5 <= claims["iat"] <= time.time() + 5, claims
    if access_token is None:
        assert "ath" not in claims, claims
    else:
        assert claims["ath"] == ath(access_token), claims


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


def assert_first_authorization(summary: dict, stack: CimdStack, callback_port: int, token_type: str = "bearer") -> None:
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
    assert tokens["token_type"].lower() == token_type and tokens["refresh_token"]
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


def assert_refreshed(summary: dict, stack: CimdStack, scheme: str = "Bearer") -> None:
    """OAuth 2.1 §4.3 / RFC 6749 §6: once the access token has expired (the MCP server answers
    401), the SDK redeems its refresh token (with the resource, RFC 8707 §2.2, and no scope: the
    granted scope is kept, OAuth 2.1 §4.3.1) without a new authorization; Ostiary rotates the
    refresh token (OAuth 2.1 §4.3.1) and the new access token reads and writes notes."""
    stepped_up, refreshed = summary["tokens"]["step_up"], summary["tokens"]["refreshed"]
    assert summary["expired_probe"]["status"] == 401, summary["expired_probe"]

    mcp_401, token_request, *retried = summary["refresh_trace"]
    assert (mcp_401["url"], mcp_401["status"], mcp_401["auth_scheme"]) == (stack.mcp_url, 401, scheme), mcp_401
    assert mcp_401["token_jti"] == stepped_up["claims"]["jti"]  # the expired one
    assert token_request["url"] == f"{stack.issuer}/token" and token_request["status"] == 200, token_request
    assert token_request["grant_type"] == "refresh_token"
    assert token_request["form_keys"] == ["client_id", "grant_type", "refresh_token", "resource"]
    assert token_request["resource"] == stack.mcp_url
    assert retried and all(e["url"] == stack.mcp_url and e["status"] == 200 for e in retried), retried
    assert all(e["token_jti"] == refreshed["claims"]["jti"] for e in retried), retried
    assert len(summary["authorizations"]) == 2 and len(summary["consents"]) == 2  # no browser

    assert refreshed["access_token"] != stepped_up["access_token"]
    assert refreshed["refresh_token"] and refreshed["refresh_token"] != stepped_up["refresh_token"]  # rotated
    assert refreshed["claims"]["exp"] > stepped_up["claims"]["exp"]
    assert set(refreshed["claims"]["scope"].split()) == FIRST_SCOPES | {"mcp:write"}
    assert refreshed["claims"]["aud"] in (stack.mcp_url, [stack.mcp_url])
    results = summary["tool_results"]
    assert results["after_refresh_list"] == results["second_list"], results["after_refresh_list"]
    assert results["after_refresh_add"]["is_error"] is False, results["after_refresh_add"]  # write works too


def assert_refreshed_and_rotated(summary: dict, stack: CimdStack, reuse_before: int) -> None:
    """The refresh (assert_refreshed) of a bearer token, which the MCP server refused once it had
    expired with 401 `invalid_token` (RFC 6750 §3.1); the rotated-away refresh token presented
    again after the grace window is refused as reuse, which revokes the consent's refresh tokens
    (RFC 9700 §4.14.2)."""
    assert_refreshed(summary, stack)
    assert 'error="invalid_token"' in summary["expired_probe"]["www_authenticate"]
    stepped_up, refreshed = summary["tokens"]["step_up"], summary["tokens"]["refreshed"]

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


def test_ts_sdk_v2_dpop_bound_tokens_issued_refreshed_and_verified(node, chromium, stack: CimdStack):
    """RFC 9449 (DPoP) end to end with the SDK's own DPoP support: the script's provider returns
    one `DpopSession` from `dpop()` (an ES256 key pair the SDK generated, kept for the whole flow),
    and registers dynamically (RFC 7591); the flow is the one above, step-up included.

    - Metadata: Ostiary lists `dpop_signing_alg_values_supported` (RFC 9449 §5.1), and so does the
      example server's protected-resource metadata (RFC 9728 §2).
    - Token endpoint (§5): both code exchanges and the refresh carried one proof of that key
      (§4.2, `htm` POST, `htu` the token endpoint, no `ath`); every answer was `token_type` DPoP
      (§5.1), and every access token's `cnf.jkt` is the RFC 7638 thumbprint of the public key,
      computed here from the JWK (§6.1).
    - MCP server (§7.1): every request after the first, unauthenticated one used the `DPoP`
      scheme with a fresh proof (unique `jti`, `ath` = hash of the token it came with) and the
      tool calls succeeded, so the example server verified them; the same unexpired token as a
      bearer token, without a proof, with a proof of another key, or with a proof the SDK already
      used (§11.1) is refused.
    - Refresh (§5): once the token expired the SDK refreshed with a proof of the same key, and
      the new token, bound to the same key, works. Ostiary's refresh-token rows for the client are
      bound to the thumbprint (`refresh_tokens.jkt`); the current refresh token presented without
      a proof is refused with `invalid_dpop_proof`, with a proof of a thief's key with
      `invalid_grant`, and neither refusal spends or revokes it.
    """
    callback_port = free_port()
    reuse_before = audit_count(stack, "token.reuse_detected")
    started = time.time()
    summary = run_flow(node, stack, "dcr", callback_port, dpop=True)

    assert_mcp_2026_07_28_and_discovery(summary, stack)
    [registration] = requests_to(summary, "POST", f"{stack.issuer}/register")
    assert registration["status"] == 201 and registration["json"]["token_endpoint_auth_method"] == "none"
    assert_first_authorization(summary, stack, callback_port, token_type="dpop")
    assert_step_up(summary, stack)
    assert_refreshed(summary, stack, scheme="DPoP")

    # The SDK's key: a public EC JWK whose RFC 7638 thumbprint is what the SDK says it is.
    key = summary["dpop"]
    public_jwk = key["public_jwk"]
    assert key["alg"] == "ES256" and public_jwk["kty"] == "EC" and "d" not in public_jwk, key
    jkt = JWKRegistry.import_key(public_jwk).thumbprint()
    assert jkt == key["thumbprint"]
    assert "ES256" in summary["as_dpop_algs"] and "ES256" in summary["resource_dpop_algs"], summary

    # §5, §5.1, §6.1: every token request carried a proof; every token is DPoP, bound to the key.
    tokens = summary["tokens"]
    assert [t["token_type"] for t in tokens.values()] == ["DPoP"] * 3, tokens
    assert [t["claims"]["cnf"] for t in tokens.values()] == [{"jkt": jkt}] * 3, tokens
    token_requests = requests_to(summary, "POST", f"{stack.issuer}/token")
    assert [(e["grant_type"], e["status"], e["token_type"]) for e in token_requests] == [
        ("authorization_code", 200, "DPoP"), ("authorization_code", 200, "DPoP"), ("refresh_token", 200, "DPoP"),
    ], token_requests  # fmt: skip
    for entry in token_requests:
        assert_proof(entry, public_jwk, f"{stack.issuer}/token", None, started)

    # §7.1: after the first (unauthenticated) request, DPoP scheme and a proof every time.
    by_jti = {t["claims"]["jti"]: t["access_token"] for t in tokens.values()}
    unauthenticated, *mcp = [e for e in summary["trace"] if e.get("url") == stack.mcp_url]
    assert unauthenticated["auth_scheme"] is None and "dpop" not in unauthenticated, unauthenticated
    assert mcp and all(e["auth_scheme"] == "DPoP" and not e["bearer"] for e in mcp), mcp
    for entry in mcp:
        assert_proof(entry, public_jwk, stack.mcp_url, by_jti[entry["token_jti"]], started)
    # The 403 is the step-up (assert_step_up), the 401 the expired token (assert_refreshed).
    assert sorted(e["status"] for e in mcp if e["status"] != 200) == [401, 403], mcp
    assert {e["token_jti"] for e in mcp} == set(by_jti), "not every token was used at the MCP server"
    proofs = [e["dpop"]["claims"]["jti"] for e in summary["trace"] if "dpop" in e]
    assert len(proofs) == len(set(proofs)) == len(token_requests) + len(mcp)  # §11.1: never reused

    # §7.1, §11.1: the example server checks the proof, not only the token.
    probes = summary["dpop_probes"]
    assert probes["good_proof"]["status"] == 200, probes["good_proof"]  # the probes themselves are sound
    assert (probes["as_bearer"]["status"], probes["as_bearer"]["error"]) == (401, "invalid_token"), probes
    for name in ("no_proof", "other_key", "replayed_proof"):
        refused = probes[name]
        assert (refused["status"], refused["error"]) == (401, "invalid_dpop_proof"), (name, refused)
        assert refused["www_authenticate"].startswith("DPoP ") and 'algs="' in refused["www_authenticate"], refused
    assert probes["other_key_thumbprint"] != jkt
    assert probes["replayed_jti"] in [e["dpop"]["claims"]["jti"] for e in mcp if e["status"] == 200]
    # The expired token, with the DPoP scheme and a good proof, is refused with a DPoP challenge.
    assert summary["expired_probe"]["www_authenticate"].startswith("DPoP "), summary["expired_probe"]

    # §5: the refresh tokens are bound to the key in Ostiary's database.
    rows = refresh_rows(stack, summary["client_id"])  # two code exchanges and the refresh
    assert len(rows) == 3 and all(row[2] == jkt for row in rows), rows
    [current] = [row for row in rows if row[1] is not None]  # the refresh's successor
    assert current[3] is None and current[4] is None, current  # unused, not revoked

    # A stolen refresh token without the key: no proof, or the thief's own key.
    refreshed = tokens["refreshed"]["refresh_token"]
    missing = refresh_at(stack, summary["client_id"], refreshed)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_dpop_proof", missing.text
    thief = DPoPClient()
    other = refresh_at(stack, summary["client_id"], refreshed, dpop=thief.proof(htu=f"{stack.issuer}/token"))
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant", other.text
    assert refresh_rows(stack, summary["client_id"]) == rows  # neither spent nor revoked anything
    assert audit_count(stack, "token.reuse_detected") == reuse_before
