"""What an MCP server needs to accept Ostiary's access tokens: copy this file.

- `OstiaryTokenVerifier` checks RFC 9068 JWT access tokens locally against Ostiary's JWKS.
- `DPoPProofs` checks DPoP proofs (RFC 9449 §4.3, §7.1), and `protect()` puts them in front of the
  SDK: a DPoP-bound token (`cnf.jkt`) is accepted only with the `DPoP` scheme and a fresh proof
  of its key, never as a bearer token.
- `protect()` completes the MCP SDK's Starlette app: the protected-resource metadata lists every
  scope, the bearer challenges name the scope to ask for, per tool, and a scope counts with the
  scopes it includes (`ScopeHierarchy`, read from Ostiary).

Only the MCP Python SDK (`mcp`, which brings `httpx2`) and `joserfc` are needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from urllib.parse import urlencode, urlsplit

import anyio
import httpx2
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, KeySet
from joserfc.jws import extract_compact
from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url, cors_middleware
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.shared.auth import ProtectedResourceMetadata
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types import HEADER_MISMATCH, ErrorData, JSONRPCError, JSONRPCRequest
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("ostiary_auth")

ALGORITHMS = ["RS256", "ES256"]  # what Ostiary signs with
JWKS_MIN_REFETCH = 30.0  # seconds: an unknown `kid` refetches the key set at most this often
HIERARCHY_RETRY = 30.0  # seconds: after a failed read of the scope hierarchy, try again this late
HIERARCHY_MAX_AGE = 300.0  # seconds: how long a read lasts when the document gives no max-age
# DPoP proofs: asymmetric algorithms only (RFC 9449 §4.3 (5)), accepted this long after their iat.
DPOP_ALGORITHMS = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"]
DPOP_MAX_AGE = 300
DPOP_CLOCK_SKEW = 60

DPOP_REQUEST = "ostiary.dpop"  # ASGI scope key: the request came with the DPoP scheme

# The DPoP-bound token whose proof `DPoPGate` has just checked for this request (the SDK's
# verifier is handed the token alone, without the request it came with).
_proven: ContextVar[AccessToken | None] = ContextVar("dpop_proven", default=None)


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3.1: the well-known suffix goes between the host and the issuer's path."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}"


class OstiaryTokenVerifier:
    """The SDK's `TokenVerifier`: a valid token becomes an `AccessToken`, anything else None
    (the caller answers 401)."""

    def __init__(self, issuer: str, resource: str):
        self.issuer = issuer
        self.resource = resource
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = anyio.Lock()

    async def verify_token(self, token: str) -> AccessToken | None:
        """What the SDK calls for `Authorization: Bearer`. RFC 9449 §7.1: a DPoP-bound token is
        not a bearer token; it passes only when `DPoPGate` has checked its proof."""
        proven = _proven.get()
        if proven is not None and proven.token == token:
            return proven
        access = await self.decode(token)
        if access is not None and access.claims and "cnf" in access.claims:
            log.info("rejected a DPoP-bound access token presented as a bearer token")
            return None
        return access

    async def decode(self, token: str) -> AccessToken | None:
        """The token's claims if Ostiary signed it for this server and it has not expired."""
        try:
            header = extract_compact(token.encode()).protected
            kid = header.get("kid")
            # RFC 9068 §4: reject a JWT that is not an access token (an ID token, say).
            if header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt") or not kid:
                return None
            keys = await self._keys_with(kid)
            if keys is None:
                return None
            claims = jwt.decode(token, keys, algorithms=ALGORITHMS).claims
            # RFC 9068 §4: iss is Ostiary, aud is this server (RFC 8707), exp has not passed.
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.resource},
                exp={"essential": True},
                sub={"essential": True},
                client_id={"essential": True},
            ).validate(claims)
        except (JoseError, ValueError, KeyError, TypeError, httpx2.HTTPError) as exc:
            log.info("rejected an access token: %s", exc)
            return None
        return AccessToken(
            token=token,
            client_id=claims["client_id"],
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=claims["aud"] if isinstance(claims["aud"], str) else self.resource,
            subject=claims["sub"],
            claims=claims,
        )

    async def _keys_with(self, kid: str) -> KeySet | None:
        """The key set, refetched when it lacks `kid` (Ostiary publishes a new key before it
        signs with it, so this is rare), or None if no published key has that `kid`."""
        if self._has(kid):
            return self._keys
        async with self._lock:
            if not self._has(kid) and time.monotonic() - self._fetched_at >= JWKS_MIN_REFETCH:
                self._keys = await self._fetch()
                self._fetched_at = time.monotonic()
        return self._keys if self._has(kid) else None

    def _has(self, kid: str) -> bool:
        return self._keys is not None and any(k.kid == kid for k in self._keys.keys)

    async def _fetch(self) -> KeySet:
        async with httpx2.AsyncClient(timeout=5.0) as http:
            response = await http.get(metadata_url(self.issuer))
            response.raise_for_status()
            metadata = response.json()
            # RFC 8414 §3.3: the document must name the issuer we trust, byte for byte.
            if metadata.get("issuer") != self.issuer:
                raise ValueError(f"metadata issuer {metadata.get('issuer')!r} is not {self.issuer!r}")
            response = await http.get(metadata["jwks_uri"])
            response.raise_for_status()
            return KeySet.import_key_set(response.json())


class DPoPProofs:
    """Checks DPoP proofs that come with a DPoP-bound access token (RFC 9449 §4.3 and §7.1):
    `typ` dpop+jwt, an asymmetric `alg`, a public `jwk` that verifies the signature and whose
    RFC 7638 thumbprint is the token's `cnf.jkt`, `htm` and `htu` of this request, a recent `iat`,
    `ath` = the token's SHA-256, and a `jti` not seen before (kept in memory while the proof is
    acceptable; several replicas of a server would share this in a cache).
    """

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def problem(self, proof: str | None, *, method: str, url: str, token: str, jkt: str) -> str | None:
        """Why this proof does not prove possession of the token's key, or None."""
        if not proof or len(proof) > 8192:
            return "a DPoP proof is required with a DPoP-bound token"
        try:
            header = extract_compact(proof.encode()).protected
            jwk = header.get("jwk")
            if header.get("typ") != "dpop+jwt" or header.get("alg") not in DPOP_ALGORITHMS or not isinstance(jwk, dict):
                return "not a DPoP proof (typ, alg or jwk)"
            if any(member in jwk for member in ("d", "p", "q", "dp", "dq", "qi", "k")):
                return "the proof's jwk is not a public key"
            key = JWKRegistry.import_key(jwk)
            registry = jws.JWSRegistry(algorithms=DPOP_ALGORITHMS, strict_check_header=False)
            registry.max_header_length = 4096  # the header carries the key
            claims = json.loads(jws.deserialize_compact(proof, key, registry=registry).payload)
        except (JoseError, ValueError, TypeError, KeyError):
            return "the DPoP proof does not verify"
        now = int(time.time())
        digest = base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
        if not hmac.compare_digest(key.thumbprint(), jkt):
            return "the DPoP proof is not signed with the token's key"
        if claims.get("htm") != method or not _same_url(claims.get("htu"), url):
            return "the DPoP proof is for another request (htm, htu)"
        iat = claims.get("iat")
        if not isinstance(iat, int) or not now - DPOP_MAX_AGE <= iat <= now + DPOP_CLOCK_SKEW:
            return "the DPoP proof is not recent (iat)"
        if not isinstance(claims.get("ath"), str) or not hmac.compare_digest(claims["ath"], digest):
            return "the DPoP proof is for another token (ath)"
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "the DPoP proof has no jti"
        self._seen = {k: v for k, v in self._seen.items() if v > now} if len(self._seen) > 10_000 else self._seen
        if self._seen.get(f"{jkt} {jti}", 0) > now:
            return "the DPoP proof was already used"
        self._seen[f"{jkt} {jti}"] = iat + DPOP_MAX_AGE + DPOP_CLOCK_SKEW
        return None


def _same_url(htu: object, url: str) -> bool:
    """RFC 9449 §4.3 (9): the request URI without query and fragment, compared after RFC 3986
    §6.2.2/§6.2.3 normalisation (scheme and host case, default port)."""

    def norm(u: str) -> tuple[str, str, int | None, str]:
        p = urlsplit(u)
        port = None if p.port in (None, {"http": 80, "https": 443}.get(p.scheme.lower())) else p.port
        return p.scheme.lower(), (p.hostname or "").lower(), port, p.path or "/"

    try:
        return isinstance(htu, str) and norm(htu) == norm(url)
    except ValueError:
        return False


class DPoPGate:
    """RFC 9449 §7.1 in front of the SDK: `Authorization: DPoP <token>` with a `DPoP` proof. A
    valid pair goes on as a verified bearer request (the SDK knows only `Bearer`); a bad one is
    answered 401 with a `DPoP` challenge naming `invalid_dpop_proof` and the accepted algorithms
    (and, as for every 401 here, where the protected-resource metadata is)."""

    def __init__(self, app: ASGIApp, *, verifier: OstiaryTokenVerifier, proofs: DPoPProofs, origin: str, resource_metadata: str):
        self.app = app
        self.verifier = verifier
        self.proofs = proofs
        self.origin = origin  # scheme://host[:port] clients use: `htu` is built from it, not from Host
        self.resource_metadata = resource_metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "dpop":
            await self.app(scope, receive, send)
            return
        token = token.strip()
        access = await self.verifier.decode(token)
        cnf = (access.claims or {}).get("cnf") if access is not None else None
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        # RFC 9449 §7.1: a bad token is invalid_token (the client refreshes or starts again), a
        # bad proof invalid_dpop_proof (the client signs a new one); both with a DPoP challenge.
        error = "invalid_token"
        if access is None:
            problem: str | None = "the access token is not valid"
        elif not isinstance(jkt, str):
            problem = "the access token is not DPoP-bound"
        else:
            error = "invalid_dpop_proof"
            if len(headers.getlist("dpop")) != 1:  # RFC 9449 §4.3 (1)
                problem = "send exactly one DPoP proof"
            else:
                problem = self.proofs.problem(
                    headers.get("dpop"), method=scope["method"], url=self.origin + scope["path"], token=token, jkt=jkt
                )
        if problem is not None:
            challenge = (
                f'DPoP error="{error}", error_description="{problem}", '
                f'algs="{" ".join(DPOP_ALGORITHMS)}", resource_metadata="{self.resource_metadata}"'
            )
            await _respond(
                send, 401, {"error": error, "error_description": problem}, ((b"www-authenticate", challenge.encode()),)
            )
            return
        raw = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
        raw.append((b"authorization", b"Bearer " + token.encode()))
        reset = _proven.set(access)
        try:
            # Marked, so that a later challenge (403 insufficient_scope) uses the DPoP scheme too.
            await self.app({**scope, "headers": raw, DPOP_REQUEST: True}, receive, send)
        finally:
            _proven.reset(reset)


class ScopeHierarchy:
    """Which of this server's scopes include others (`mcp:write` includes `mcp:read`). MCP
    2026-07-28 authorization (Step-Up Authorization Flow): servers MUST account for scope
    hierarchies when deciding whether a token is sufficient.

    Ostiary publishes the hierarchy its consent page shows at
    `/resources/scopes?resource=<this server's URI>` (already transitive). It is read when first
    needed and again once its `Cache-Control: max-age` has passed; while Ostiary has never
    answered, `fallback` (a plain mapping from configuration) applies, and a failed re-read
    keeps the last published one.
    """

    def __init__(self, issuer: str, resource: str, fallback: Mapping[str, Iterable[str]] | None = None):
        self.url = f"{issuer}/resources/scopes?{urlencode({'resource': resource})}"
        self.resource = resource
        self._implies = {name: frozenset(others) for name, others in (fallback or {}).items()}
        self._published = False
        self._next_read = float("-inf")
        self._lock = anyio.Lock()

    async def effective(self, granted: Iterable[str]) -> set[str]:
        """The scopes a token holding `granted` may act with: them and all they include."""
        await self._refresh()
        return closure(self._implies, granted)

    async def _refresh(self) -> None:
        if time.monotonic() < self._next_read:
            return
        async with self._lock:
            if time.monotonic() < self._next_read:
                return
            try:
                self._implies, max_age = await self._read()
            except (httpx2.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                source = "last published" if self._published else "configured"
                log.warning("could not read the scope hierarchy at %s (%s); using the %s one", self.url, exc, source)
                self._next_read = time.monotonic() + HIERARCHY_RETRY
                return
            self._published = True
            self._next_read = time.monotonic() + max_age

    async def _read(self) -> tuple[dict[str, frozenset[str]], float]:
        async with httpx2.AsyncClient(timeout=5.0) as http:
            response = await http.get(self.url)
        response.raise_for_status()
        document = response.json()
        if document.get("resource") != self.resource:
            raise ValueError(f"the document describes {document.get('resource')!r}")
        implies = {name: frozenset(map(str, scope["implies"])) for name, scope in document["scopes"].items()}
        match = re.search(r"max-age=(\d+)", response.headers.get("cache-control", ""))
        max_age = float(match.group(1)) if match else HIERARCHY_MAX_AGE
        return implies, min(max(max_age, HIERARCHY_RETRY), 3600.0)


def closure(implies: Mapping[str, Iterable[str]], names: Iterable[str]) -> set[str]:
    """`names` and every scope they imply, directly or not; a cycle is visited once."""
    found: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in found:
            found.add(name)
            pending.extend(implies.get(name, ()))
    return found


def protect(
    app: Starlette,
    *,
    issuer: str,
    resource: str,
    scopes: list[str],
    base_scope: str,
    tool_scopes: dict[str, str],
    resource_name: str | None = None,
    allowed_origins: list[str] | None = None,
    implies: Mapping[str, Iterable[str]] | None = None,
    verifier: OstiaryTokenVerifier | None = None,
) -> Starlette:
    """Finish the app from `MCPServer.streamable_http_app()`.

    The SDK serves RFC 9728 metadata listing only `required_scopes`, and its challenges carry no
    `scope=`; so the metadata route is replaced by one listing every scope, and the MCP endpoint
    is wrapped in `ScopeChallenges`, which reads the scope hierarchy from Ostiary (`implies`,
    {scope: [scopes it includes]}, applies until Ostiary has answered). With the app's
    `verifier`, DPoP-bound tokens are accepted too (`DPoPGate`), and the metadata says so.
    """
    prm_url = str(build_resource_metadata_url(resource))
    prm_path, mcp_path = urlsplit(prm_url).path, urlsplit(resource).path or "/"
    metadata = ProtectedResourceMetadata.model_validate(
        {
            "resource": resource,
            "authorization_servers": [issuer],
            "scopes_supported": scopes,
            "resource_name": resource_name,
            # RFC 9728 §2: the proof algorithms accepted (RFC 9449), when DPoP is.
            "dpop_signing_alg_values_supported": DPOP_ALGORITHMS if verifier is not None else None,
        }
    )
    handler = ProtectedResourceMetadataHandler(metadata)
    prm_route = Route(prm_path, endpoint=cors_middleware(handler.handle, ["GET", "OPTIONS"]), methods=["GET", "OPTIONS"])
    done = set()
    for i, route in enumerate(app.router.routes):
        path = getattr(route, "path", None)
        if path == prm_path:
            app.router.routes[i] = prm_route
        elif path == mcp_path:
            route.app = ScopeChallenges(
                route.app,
                resource_metadata=prm_url,
                own_scopes=set(scopes),
                base_scope=base_scope,
                tool_scopes=tool_scopes,
                hierarchy=ScopeHierarchy(issuer, resource, implies),
            )
        done.add(path)
    if not {prm_path, mcp_path} <= done:
        raise RuntimeError("the MCP SDK's app no longer has the routes protect() expects")
    parts = urlsplit(resource)
    if verifier is not None:
        app.add_middleware(
            DPoPGate, verifier=verifier, proofs=DPoPProofs(), origin=f"{parts.scheme}://{parts.netloc}", resource_metadata=prm_url
        )
    # Outermost: a browser page from another origin is refused before any token is looked at.
    app.add_middleware(OriginGuard, allowed={f"{parts.scheme}://{parts.netloc}", *(allowed_origins or [])})
    return app


class OriginGuard:
    """MCP Streamable HTTP transport (security warning): servers MUST validate the `Origin`
    header of every request and answer 403 when it is present and not allowed (DNS rebinding,
    a web page driving a local MCP server). Requests without `Origin` (native clients) pass."""

    def __init__(self, app: ASGIApp, allowed: set[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
            if origin is not None and origin not in self.allowed:
                await _respond(send, 403, {"error": "origin not allowed"})
                return
        await self.app(scope, receive, send)


class ScopeChallenges:
    """The bearer challenges MCP clients act on (RFC 6750 §3, RFC 9728 §5.1, MCP authorization):

    - no valid token: 401 with `resource_metadata` (where to start) and `scope` (what to ask for);
    - a request whose `Mcp-Method` or `Mcp-Name` header contradicts its body: the SDK's own 400
      `HeaderMismatch`, before any scope is worked out from that body (a challenge for the
      body's tool would be for a call the SDK refuses anyway);
    - a valid token without the scope a request needs (every request needs `base_scope`; a
      `tools/call` also needs its tool's scope), counting the scopes its scopes include
      (`hierarchy`): 403 `insufficient_scope`, whose `scope` is what the client should ask for
      on re-authorization: the needed scopes plus those it already holds here, so that a client
      replacing (not merging) its scopes loses nothing.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        resource_metadata: str,
        own_scopes: set[str],
        base_scope: str,
        tool_scopes: dict[str, str],
        hierarchy: ScopeHierarchy | None = None,
    ):
        self.app = app
        self.resource_metadata = resource_metadata
        self.own_scopes = own_scopes
        self.base_scope = base_scope
        self.tool_scopes = tool_scopes
        self.hierarchy = hierarchy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")  # set by the SDK's BearerAuthBackend from our verifier
        if not isinstance(user, AuthenticatedUser):
            sent_token = any(name == b"authorization" for name, _ in scope["headers"])
            # RFC 6750 §3.1: no error code when the request carried no credentials at all.
            await self._challenge(send, 401, "invalid_token" if sent_token else None, self.base_scope)
            return
        needed = {self.base_scope}
        if scope["method"] == "POST":
            body, receive = await _read_body(receive)
            if body is None:
                await _respond(send, 413, {"error": "request body too large"})
                return
            refusal = header_mismatch(scope, body)
            if refusal is not None:
                await _send(send, *refusal)
                return
            needed |= self._tool_scopes(body)
        granted = set(user.scopes)
        held = granted if needed <= granted or self.hierarchy is None else await self.hierarchy.effective(granted)
        if not needed <= held:
            wanted = " ".join(sorted(needed | (granted & self.own_scopes)))
            await self._challenge(send, 403, "insufficient_scope", wanted, dpop=bool(scope.get(DPOP_REQUEST)))
            return
        if held != granted:
            # What the request may do, for the SDK's own `required_scopes` check and for Starlette.
            scope = {**scope, "auth": AuthCredentials(sorted(held))}
        await self.app(scope, receive, send)

    def _tool_scopes(self, body: bytes) -> set[str]:
        try:
            message = json.loads(body)
        except ValueError:
            return set()  # the SDK answers the parse error
        # One JSON-RPC message per request: batches are gone from MCP (2025-06-18 and later), and
        # whatever else arrives is the SDK's to refuse.
        if isinstance(message, dict) and message.get("method") == "tools/call" and isinstance(message.get("params"), dict):
            tool_scope = self.tool_scopes.get(message["params"].get("name"))
            return {tool_scope} if tool_scope else set()
        return set()

    async def _challenge(self, send: Send, status: int, error: str | None, scope: str, *, dpop: bool = False) -> None:
        params = [f'error="{error}"'] if error else []
        params += [f'resource_metadata="{self.resource_metadata}"', f'scope="{scope}"']
        body = {"error": error, "scope": scope} if error else {"scope": scope}
        # RFC 9449 §7.1: a request made with the DPoP scheme is challenged with it.
        scheme = "DPoP " if dpop else "Bearer "
        algs = [f'algs="{" ".join(DPOP_ALGORITHMS)}"'] if dpop else []
        await _respond(send, status, body, ((b"www-authenticate", (scheme + ", ".join(params + algs)).encode()),))


def header_mismatch(scope: Scope, body: bytes) -> tuple[int, bytes] | None:
    """The SDK's answer to a request whose routing headers contradict its body, or None.

    MCP Streamable HTTP (2026-07-28), Server Validation: servers MUST reject a request whose
    `Mcp-Method` / `Mcp-Name` (or `MCP-Protocol-Version`) header does not match the body, with
    400 and a JSON-RPC `HeaderMismatch` error. The SDK does that only on the per-request path it
    routes a 2026-07-28 request to; this runs the SDK's own checks in the same order and builds
    the same body, so the 400 is the SDK's, just earlier. Requests on the initialize-era path
    (an older or no `MCP-Protocol-Version`) carry no such headers to agree with.
    """
    headers = Headers(scope=scope)
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER)  # the first one, as the SDK routes
    if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
        return None
    try:
        decoded = json.loads(body)
        request = JSONRPCRequest.model_validate(decoded)
    except (ValueError, RecursionError, ValidationError):
        return None  # not one JSON-RPC request: the SDK refuses it (or acknowledges a notification)
    duplicated = find_duplicated_routing_header(headers.items())
    if duplicated is not None:
        rejection = InboundLadderRejection(code=HEADER_MISMATCH, message=f"{duplicated} header appears more than once")
    else:
        verdict = classify_inbound_request(decoded, headers=dict(headers))
        if not isinstance(verdict, InboundLadderRejection):
            return None
        rejection = verdict
    error = JSONRPCError(
        jsonrpc="2.0", id=request.id, error=ErrorData(code=rejection.code, message=rejection.message, data=rejection.data)
    )
    content = json.dumps(error.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":"))
    return ERROR_CODE_HTTP_STATUS.get(rejection.code, 400), content.encode()


async def _respond(send: Send, status: int, content: dict, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await _send(send, status, json.dumps(content).encode(), headers)


async def _send(send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole request body (None if larger than the SDK accepts), and a `receive` that
    hands it to the app again."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > DEFAULT_MAX_REQUEST_BODY_SIZE:
            return None, receive
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
