"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document-02, the revision
MCP 2026-07-28 cites; "CIMD §n" below is a section of that revision).

A client_id that is an https URL names a JSON document the client publishes about itself. We
fetch it (app/infra/fetch.py), validate it, and keep it in the `clients` table as a cache shared
by every replica, for as long as its HTTP cache headers say (within a floor and a ceiling).
Failures are never cached. The token endpoint uses the stored document and never fetches. An
operator's trust policy on the hosts of client_ids (allow and deny lists) is applied before
either.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from authlib.oauth2.rfc6749 import InvalidClientError
from sqlalchemy.orm import Session

from app.infra.db import now
from app.infra.fetch import Busy, Fetcher, FetchError
from app.models import Client
from app.models.client import KIND_METADATA_DOCUMENT
from app.oauth.errors import safe_description
from app.oauth.redirect_uris import InvalidRedirectUri, validate_registered
from app.security.text import invisible_character
from app.services import audit, clients
from app.settings import NATIVE_APP_SCHEMES, Settings, host_pattern
from app.stores import cimd_hosts as hosts_store
from app.stores import clients as store

log = logging.getLogger("ostiary.cimd")

SHARED_SECRET_METHODS = {"client_secret_basic", "client_secret_post", "client_secret_jwt"}
PUBLIC_GRANT_TYPES = ("authorization_code", "refresh_token")
BUSY = "Too many apps are being looked up right now. Please try again in a few seconds."
BLOCKED = "This app has been blocked by the administrator of this server."
DISABLED = "This app has been disabled by the administrator of this server."
FETCH_FAILED = "The app's metadata document could not be fetched. If you publish it, check that it is served over https from a public address."
HOST_DENIED = "The administrator of this server does not accept apps published at {host}."
HOST_NOT_ALLOWED = "Apps published at {host} are not among those the administrator of this server accepts."
RULES_REFRESH = 5.0  # seconds a process keeps the console's host rules


class InvalidDocument(Exception):
    pass


def is_metadata_url(client_id: str) -> bool:
    """Whether a client_id names a metadata document (CIMD §3): an https URL with a path."""
    return client_id.startswith("https://")


def url_problem(client_id: str) -> str | None:
    """CIMD §3: https, a path, no fragment, no user info, no dot segments."""
    try:
        parts = urlsplit(client_id)
        _ = parts.port  # raises on a bad port
    except ValueError:
        return "the client_id is not a valid URL"
    if parts.scheme != "https" or not parts.hostname:
        return "the client_id URL must use https"
    if "#" in client_id:
        return "the client_id URL must not contain a fragment"
    if parts.username is not None or parts.password is not None:
        return "the client_id URL must not contain user information"
    if not parts.path or parts.path == "/":
        return "the client_id URL must contain a path"
    if any(unquote(seg) in (".", "..") for seg in parts.path.split("/")):  # %2e too (RFC 3986 §6.2.2.2)
        return "the client_id URL must not contain . or .. path segments"
    if len(client_id) > 2000:
        return "the client_id URL is too long"
    return None


def cache_lifetime(headers: httpx.Headers, settings: Settings, at: float | None = None) -> int:
    """Seconds to keep a document (CIMD §5.2: respect HTTP caching, RFC 9111, within bounds of
    our own): Cache-Control max-age, else Expires, within floor/ceiling. An explicit no-store,
    no-cache or max-age=0 is not overridden by the floor: the document is used for the request
    that fetched it and fetched again next time
    (docs/decisions.md#metadata-documents-are-cached-between-a-floor-and-a-ceiling)."""
    at = time.time() if at is None else at
    cache_control = headers.get("cache-control", "").lower()
    match = re.search(r"(?:^|[,\s])max-age\s*=\s*(\d+)", cache_control)
    if "no-store" in cache_control or "no-cache" in cache_control or (match and int(match.group(1)) == 0):
        return 0
    lifetime = None
    if match:
        lifetime = int(match.group(1))
    elif headers.get("expires"):
        try:
            lifetime = int(parsedate_to_datetime(headers["expires"]).timestamp() - at)
        except (TypeError, ValueError, IndexError):
            lifetime = 0
    if lifetime is None:
        lifetime = settings.cimd_cache_min
    return max(settings.cimd_cache_min, min(settings.cimd_cache_max, lifetime))


def validate_document(client_id: str, body: bytes, native_schemes: Collection[str] = NATIVE_APP_SCHEMES) -> dict[str, Any]:
    """The document's metadata, checked and with known client quirks tolerated."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidDocument("the document is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidDocument("the document is not a JSON object")
    # CIMD §4: the document's client_id MUST equal the URL it was fetched from (simple string
    # comparison, RFC 3986 §6.2.1).
    if doc.get("client_id") != client_id:
        raise InvalidDocument("the document's client_id does not match its URL")
    # CIMD §4.1: no shared-secret method, client_secret or client_secret_expires_at in a
    # document anyone can read.
    if "client_secret" in doc or "client_secret_expires_at" in doc:
        raise InvalidDocument("the document must not contain a client_secret")
    name = doc.get("client_name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidDocument("the document needs a client_name")
    hidden = invisible_character(name)
    if hidden is not None:
        raise InvalidDocument(f"the client_name must not contain control, format or separator characters ({hidden})")
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise InvalidDocument("the document needs redirect_uris")
    try:
        uris = [validate_registered(u, native_schemes) for u in uris[:30]]
    except InvalidRedirectUri as exc:
        raise InvalidDocument(f"the document has an invalid redirect URI: {exc}") from None

    method = doc.get("token_endpoint_auth_method")
    if method is None:
        # Quirk (ChatGPT): the plural, server-metadata spelling instead of the client field.
        offered = doc.get("token_endpoint_auth_methods_supported")
        if isinstance(offered, list) and offered:
            method = "none" if "none" in offered else offered[0]
        else:
            method = "none"
    if method in SHARED_SECRET_METHODS:
        raise InvalidDocument(f"token_endpoint_auth_method {method} needs a shared secret, which a document cannot have")
    if method == "private_key_jwt":
        # CIMD §8.2: a document may publish public keys, and the client MUST then authenticate
        # at the token endpoint with signed assertions (RFC 7523 §2.2).
        keys_problem = _keys_problem(doc)
        if keys_problem:
            raise InvalidDocument(keys_problem)
    elif method != "none":
        raise InvalidDocument(f"token_endpoint_auth_method {method} is not supported; use none or private_key_jwt")

    grant_types = doc.get("grant_types", list(PUBLIC_GRANT_TYPES))
    if not isinstance(grant_types, list):
        raise InvalidDocument("grant_types must be an array")
    # Quirk (Claude Desktop lists jwt-bearer): keep what a public client can use, drop the rest.
    grant_types = [g for g in PUBLIC_GRANT_TYPES if g in grant_types]
    if "authorization_code" not in grant_types:
        raise InvalidDocument("the document must allow the authorization_code grant")
    return {
        **doc,
        "redirect_uris": uris,
        "token_endpoint_auth_method": method,
        "grant_types": grant_types,
        "client_name": name.strip(),
    }


def _keys_problem(doc: dict[str, Any]) -> str | None:
    """private_key_jwt needs public keys: `jwks` (a JWK Set without private key material, CIMD
    §4.1) or an https `jwks_uri`, not both (RFC 7591 §2)."""
    jwks, jwks_uri = doc.get("jwks"), doc.get("jwks_uri")
    if (jwks is None) == (jwks_uri is None):
        return "private_key_jwt needs either jwks or jwks_uri in the document"
    if jwks_uri is not None:
        return (
            None
            if isinstance(jwks_uri, str) and jwks_uri.startswith("https://") and len(jwks_uri) <= 2000
            else "jwks_uri must be an https URL"
        )
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and k.get("kty") for k in keys):
        return "jwks must be a JWK Set"
    if any(k.get("kty") == "oct" or "d" in k for k in keys):
        return "jwks must hold public keys only"
    return None


# -- the trust policy for client hosts ------------------------------------------------------------


@dataclass(frozen=True)
class HostRules:
    """Host patterns (app.settings.host_pattern) from the settings and the console together."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


def client_host(client_id: str) -> str:
    """The host of a client_id URL in the canonical form of host patterns: lower case, IDNA
    A-labels, no trailing dot (`https://Example.COM./c.json` is `example.com`); "" if none."""
    try:
        host = urlsplit(client_id).hostname or ""
    except ValueError:
        return ""
    try:
        return host_pattern(host) if host else ""
    except ValueError:
        return host.removesuffix(".")


def host_matches(host: str, pattern: str) -> bool:
    """`example.com` matches that host only; `*.example.com` every subdomain, at any depth, but
    not example.com itself; an IP address only itself."""
    if not pattern.startswith("*."):
        return host == pattern
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        return host.endswith(pattern[1:])


def host_refusal(host: str, rules: HostRules) -> str | None:
    """CIMD §8.9 (Client ID Domain Trust): the server MAY keep its own policy on the domains used
    as client_ids. A deny match refuses; once any allow rule exists, a host that matches none is
    refused; otherwise every host passes (docs/decisions.md#cimd-client-host-trust-policy).
    Returns why ("denied", "not allowed"), or None."""
    if any(host_matches(host, p) for p in rules.deny):
        return "denied"
    if rules.allow and not any(host_matches(host, p) for p in rules.allow):
        return "not allowed"
    return None


class MetadataDocuments:
    """Resolves client_ids: registered clients from the table, URLs through their documents."""

    def __init__(self, fetcher: Fetcher, settings: Settings):
        self.fetcher = fetcher
        self._settings = settings
        # The console's host rules, kept a few seconds so that /token adds no query
        # (docs/decisions.md#cimd-client-host-trust-policy).
        self._rules_lock = threading.Lock()
        self._console_rules = HostRules()
        self._rules_loaded_at = float("-inf")
        self._rules_generation = 0

    def host_rules(self, db: Session) -> HostRules:
        """The settings' host rules and the console's, these read at most every RULES_REFRESH
        seconds (at once after `host_rules_changed` in this process)."""
        if time.monotonic() - self._rules_loaded_at >= RULES_REFRESH:
            with self._rules_lock:
                if time.monotonic() - self._rules_loaded_at >= RULES_REFRESH:
                    generation = self._rules_generation
                    rows = hosts_store.all_rules(db)
                    self._console_rules = HostRules(
                        allow=tuple(r.host for r in rows if r.rule == "allow"),
                        deny=tuple(r.host for r in rows if r.rule == "deny"),
                    )
                    if generation == self._rules_generation:  # not changed while we read
                        self._rules_loaded_at = time.monotonic()
        console = self._console_rules
        return HostRules(
            allow=(*self._settings.cimd_allowed_client_hosts, *console.allow),
            deny=(*self._settings.cimd_denied_client_hosts, *console.deny),
        )

    def host_rules_changed(self) -> None:
        """An admin added or removed a host rule: this process reads them again at the next
        request (others within RULES_REFRESH)."""
        self._rules_generation += 1
        self._rules_loaded_at = float("-inf")

    def resolve(self, db: Session, client_id: str, *, refresh: bool) -> Client | None:
        # A read-only copy: a fetched document is stored through the session by _fetch.
        row = store.get_detached(db, client_id)
        if row is not None and row.disabled:
            # An admin disabled it: refused wherever it is looked up, before any fetch
            # (docs/decisions.md#a-disabled-client-is-refused-until-enabled).
            raise InvalidClientError(description=DISABLED)
        if not self._settings.cimd_enabled or not is_metadata_url(client_id):
            return row if row is not None and row.kind != KIND_METADATA_DOCUMENT else None
        if row is not None and row.kind != KIND_METADATA_DOCUMENT:
            return None
        # The host trust policy comes first: before any fetch, and before a stored copy is used
        # at /authorize or /token (a host refused since it was stored is refused too). A URL
        # never seen at /authorize is simply unknown at /token (below): nothing to record.
        if row is not None or refresh:
            self._check_host(db, client_id)
        if row is not None and (not refresh or (row.metadata_expires_at or 0) > now()):
            return row
        if not refresh:
            return None  # the token endpoint never fetches: no document seen yet, no client
        # Blocking deletes the cached row; before fetching again, look at the block list.
        if store.is_blocked(db, client_id):
            raise InvalidClientError(description=BLOCKED)
        return self._fetch(db, client_id)

    def _check_host(self, db: Session, client_id: str) -> None:
        host = client_host(client_id)
        if not host:
            return  # not a URL with a host: url_problem refuses it before any fetch
        refusal = host_refusal(host, self.host_rules(db))
        if refusal is None:
            return
        log.info("client %s refused: its host %s is %s by the trust policy", client_id, host, refusal)
        audit.record(db, "client.host_refused", client_id=client_id, host=host, reason=refusal)
        message = HOST_DENIED if refusal == "denied" else HOST_NOT_ALLOWED
        raise InvalidClientError(description=safe_description(message.format(host=host)))

    def _fetch(self, db: Session, client_id: str) -> Client:
        """Fetch, validate and cache the document: only a 200 answer counts and redirects are not
        followed (CIMD §5, app/infra/fetch.py); a failure ends the authorization request (§5.1)
        and is not cached (§5.2). What this writes (the cached client, or the audit row of a
        refusal) is committed by the authorization endpoint's route."""
        problem = url_problem(client_id)
        if problem:
            raise InvalidClientError(description=problem)
        try:
            fetched = self.fetcher.get_json_document(client_id)
            meta = validate_document(client_id, fetched.body, self._settings.native_app_schemes)
        except (FetchError, InvalidDocument) as exc:
            log.info("client metadata document %s refused: %s", client_id, exc)
            audit.record(db, "client.metadata_refused", client_id=client_id, reason=str(exc)[:200])
            # Why a fetch failed (an address refused, a name that does not resolve, a refused
            # connection, a timeout) would let anyone probe the network from here: the page says
            # only that it failed; the log and the audit row say why. What is wrong with a
            # document that was fetched is the publisher's own content, and is shown.
            if isinstance(exc, Busy):
                reason = BUSY
            elif isinstance(exc, FetchError):
                reason = FETCH_FAILED
            else:
                reason = f"The app's metadata document could not be used: {exc}."
            raise InvalidClientError(description=safe_description(reason)) from None
        expires = now() + cache_lifetime(fetched.headers, self._settings)
        return clients.cache_document(db, client_id, meta, expires_at=expires)
