"""What an MCP server needs to accept Ostiary's access tokens: copy this file.

- `OstiaryTokenVerifier` checks RFC 9068 JWT access tokens locally against Ostiary's JWKS.
- `protect()` completes the MCP SDK's Starlette app: the protected-resource metadata lists every
  scope, and the bearer challenges name the scope to ask for, per tool.

Only the MCP Python SDK (`mcp`, which brings `httpx2`) and `joserfc` are needed.
"""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import urlsplit

import anyio
import httpx2
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("ostiary_auth")

ALGORITHMS = ["RS256", "ES256"]  # what Ostiary signs with
JWKS_MIN_REFETCH = 30.0  # seconds: an unknown `kid` refetches the key set at most this often


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
) -> Starlette:
    """Finish the app from `MCPServer.streamable_http_app()`.

    The SDK serves RFC 9728 metadata listing only `required_scopes`, and its challenges carry no
    `scope=`; so the metadata route is replaced by one listing every scope, and the MCP endpoint
    is wrapped in `ScopeChallenges`.
    """
    prm_url = str(build_resource_metadata_url(resource))
    prm_path, mcp_path = urlsplit(prm_url).path, urlsplit(resource).path or "/"
    (prm_route,) = create_protected_resource_routes(
        resource_url=resource, authorization_servers=[issuer], scopes_supported=scopes, resource_name=resource_name
    )
    done = set()
    for i, route in enumerate(app.router.routes):
        path = getattr(route, "path", None)
        if path == prm_path:
            app.router.routes[i] = prm_route
        elif path == mcp_path:
            route.app = ScopeChallenges(
                route.app, resource_metadata=prm_url, own_scopes=set(scopes), base_scope=base_scope, tool_scopes=tool_scopes
            )
        done.add(path)
    if not {prm_path, mcp_path} <= done:
        raise RuntimeError("the MCP SDK's app no longer has the routes protect() expects")
    # Outermost: a browser page from another origin is refused before any token is looked at.
    parts = urlsplit(resource)
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
    - a valid token without the scope a request needs (every request needs `base_scope`; a
      `tools/call` also needs its tool's scope): 403 `insufficient_scope`, whose `scope` is what
      the client should ask for on re-authorization: the needed scopes plus those it already
      holds here, so that a client replacing (not merging) its scopes loses nothing.
    """

    def __init__(self, app: ASGIApp, *, resource_metadata: str, own_scopes: set[str], base_scope: str, tool_scopes: dict[str, str]):
        self.app = app
        self.resource_metadata = resource_metadata
        self.own_scopes = own_scopes
        self.base_scope = base_scope
        self.tool_scopes = tool_scopes

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
            needed |= self._tool_scopes(body)
        granted = set(user.scopes)
        if not needed <= granted:
            await self._challenge(send, 403, "insufficient_scope", " ".join(sorted(needed | (granted & self.own_scopes))))
            return
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

    async def _challenge(self, send: Send, status: int, error: str | None, scope: str) -> None:
        params = [f'error="{error}"'] if error else []
        params += [f'resource_metadata="{self.resource_metadata}"', f'scope="{scope}"']
        body = {"error": error, "scope": scope} if error else {"scope": scope}
        await _respond(send, status, body, ((b"www-authenticate", ("Bearer " + ", ".join(params)).encode()),))


async def _respond(send: Send, status: int, content: dict, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps(content).encode()
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
