"""RFC 8414 authorization server metadata (also served as OIDC Discovery).

Derived from what the app serves: each endpoint URL from the endpoint table (app/http/
endpoints.py), the grant and response types and client authentication methods from the authlib
server's registered grants and endpoints, the scopes from the resource catalogue. Nothing here is
a hand-kept list that could drift.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.http.endpoints import ENDPOINTS, REGISTER
from app.oauth.scopes import PROTOCOL_SCOPES
from app.oauth.server import OstiaryServer
from app.settings import Settings
from app.stores import resources as resources_store

log = logging.getLogger("ostiary.metadata")

REFRESH_INTERVAL = 10.0  # seconds: new resources and scopes show up this quickly


def endpoint_urls(settings: Settings) -> dict[str, str]:
    """RFC 8414 §2: the URL of every endpoint we serve (a closed registration is not served)."""
    return {
        e.metadata_field: settings.issuer + e.path
        for e in ENDPOINTS
        if e.metadata_field and not (e is REGISTER and settings.registration == "closed")
    }


def build(settings: Settings, server: OstiaryServer, scopes: list[str] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"issuer": settings.issuer}
    doc.update(endpoint_urls(settings))
    doc.update(server.capabilities())
    if scopes is not None:
        doc["scopes_supported"] = scopes
    return doc


class MetadataCache:
    """The serialized document, rebuilt every few seconds. If the database is down the last good
    document is served (metadata URLs never answer 5xx: MCP clients stop discovery on one)."""

    def __init__(self, settings: Settings, server: OstiaryServer, sessions: sessionmaker[Session]):
        self._settings = settings
        self._server = server
        self._sessions = sessions
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._scopes: list[str] | None = None
        self._built_at = 0.0

    def body(self) -> bytes:
        body = self._body
        if body is not None and time.monotonic() - self._built_at < REFRESH_INTERVAL:
            return body
        with self._lock:
            if self._body is None or time.monotonic() - self._built_at >= REFRESH_INTERVAL:
                try:
                    with self._sessions() as db:
                        self._scopes = resources_store.all_scope_names(db)
                except SQLAlchemyError:
                    log.warning("metadata: could not read the scope catalogue; serving the last known one")
                doc = build(self._settings, self._server, self._scope_list())
                self._body = json.dumps(doc, separators=(",", ":")).encode()
                self._built_at = time.monotonic()
            return self._body

    def fresh_body(self) -> bytes | None:
        """The document if it needs no rebuild (no I/O: safe on the event loop), else None."""
        body = self._body
        return body if body is not None and time.monotonic() - self._built_at < REFRESH_INTERVAL else None

    def _scope_list(self) -> list[str]:
        return sorted(set(self._scopes or []) | set(PROTOCOL_SCOPES))

    def invalidate(self) -> None:
        self._built_at = 0.0
