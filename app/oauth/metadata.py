"""RFC 8414 authorization server metadata (also served as OIDC Discovery).

Derived from what the app serves: each endpoint URL from its route, the grant and response types
and client authentication methods from the authlib server's registered grants and endpoints, the
scopes from the resource catalogue. Nothing here is a hand-kept list that could drift.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from fastapi import FastAPI
from starlette.routing import NoMatchFound

from app.runtime import Runtime
from app.stores import resources as resources_store

log = logging.getLogger("ostiary.metadata")

# Route names (see app/oauth/routes.py) and the metadata field each one fills.
ENDPOINT_FIELDS = {
    "authorization_endpoint": "authorize",
    "token_endpoint": "token",
    "jwks_uri": "jwks",
    "registration_endpoint": "register",
    "revocation_endpoint": "revoke",
    "introspection_endpoint": "introspect",
    "userinfo_endpoint": "userinfo",
}
REFRESH_INTERVAL = 10.0  # seconds: new resources and scopes show up this quickly


def endpoint_urls(app: FastAPI, issuer: str, issuer_path: str) -> dict[str, str]:
    origin = issuer[: len(issuer) - len(issuer_path)] if issuer_path else issuer
    urls = {}
    for field, route_name in ENDPOINT_FIELDS.items():
        try:
            urls[field] = origin + app.url_path_for(route_name)
        except NoMatchFound:
            continue
    return urls


def build(app: FastAPI, runtime: Runtime, scopes: list[str] | None) -> dict:
    settings = runtime.settings
    server = runtime.extras.get("server")
    doc: dict = {"issuer": settings.issuer}
    doc.update(endpoint_urls(app, settings.issuer, settings.issuer_path))
    if server is not None:
        doc.update(server.capabilities())
    if scopes is not None:
        doc["scopes_supported"] = scopes
    return doc


class MetadataCache:
    """The serialized document, rebuilt every few seconds. If the database is down the last good
    document is served (metadata URLs never answer 5xx: MCP clients stop discovery on one)."""

    def __init__(self, app: FastAPI, runtime: Runtime):
        self._app = app
        self._runtime = runtime
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._scopes: list[str] | None = None
        self._built_at = 0.0

    def body(self) -> bytes:
        if self._body is not None and time.monotonic() - self._built_at < REFRESH_INTERVAL:
            return self._body
        with self._lock:
            if self._body is None or time.monotonic() - self._built_at >= REFRESH_INTERVAL:
                try:
                    with self._runtime.sessions() as db:
                        self._scopes = resources_store.all_scope_names(db)
                except Exception:  # noqa: BLE001 - keep serving the last known scopes
                    log.warning("metadata: could not read the scope catalogue; serving the last known one")
                doc = build(self._app, self._runtime, self._scope_list())
                self._body = json.dumps(doc, separators=(",", ":")).encode()
                self._built_at = time.monotonic()
            return self._body

    def _scope_list(self) -> list[str] | None:
        server = self._runtime.extras.get("server")
        extra = server.protocol_scopes() if server is not None else []
        if self._scopes is None:
            return extra or None
        return sorted(set(self._scopes) | set(extra))

    def invalidate(self) -> None:
        self._built_at = 0.0
