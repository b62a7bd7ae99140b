"""Organisations' OpenID Connect providers as seen from here: their discovery documents and
keys, fetched through the guarded fetcher (an internal provider must be listed in
OSTIARY_CIMD_ALLOWED_HOSTS) and cached a few minutes; the ID-JAG grant and upstream sign-in both
use them.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError
from joserfc.jwk import KeySet

from app.infra.fetch import Fetcher, FetchError
from app.oauth.client_assertion import PRIVATE_MEMBERS

TTL = 300
MAX_DOCUMENT = 64 * 1024


class UpstreamError(InvalidGrantError):
    """A provider's discovery document or keys could not be used."""


class Upstreams:
    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _cached(self, url: str, *, fresh: bool = False) -> dict[str, Any]:
        with self._lock:
            hit = self._cache.get(url)
        if hit is not None and not fresh and hit[0] > time.monotonic():
            return hit[1]
        try:
            body = json.loads(self.fetcher.get_json_document(url, MAX_DOCUMENT).body)
        except (FetchError, ValueError):
            raise UpstreamError("The identity provider could not be reached.") from None
        if not isinstance(body, dict):
            raise UpstreamError("The identity provider answered with something that is not a JSON object.")
        with self._lock:
            self._cache[url] = (time.monotonic() + TTL, body)
        return body

    def discovery(self, issuer: str) -> dict[str, Any]:
        """OIDC Discovery §4: the provider's metadata; its `issuer` must be the one asked for
        (§4.3), and it must name the endpoints we use."""
        doc = self._cached(issuer + "/.well-known/openid-configuration")
        if doc.get("issuer") != issuer or not isinstance(doc.get("jwks_uri"), str):
            raise UpstreamError("The identity provider's discovery document is not usable.")
        return doc

    def keys(self, issuer: str, kid: str | None) -> KeySet:
        """The provider's public keys; fetched again when a `kid` is unknown (key rollover)."""
        uri = self.discovery(issuer)["jwks_uri"]
        document = self._cached(uri)
        if kid and not any(isinstance(k, dict) and k.get("kid") == kid for k in document.get("keys", [])):
            document = self._cached(uri, fresh=True)
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise UpstreamError("The identity provider's jwks_uri is not a JWK Set.")
        public: Any = {
            "keys": [{k: v for k, v in key.items() if k not in PRIVATE_MEMBERS} for key in keys if isinstance(key, dict)]
        }
        try:
            return KeySet.import_key_set(public)
        except Exception:  # noqa: BLE001 - any malformed key set is the same refusal
            raise UpstreamError("The identity provider's keys cannot be used.") from None
