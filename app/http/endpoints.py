"""The one table of Ostiary's endpoints and the policies that depend on the path.

The edge (app/http/edge.py) reads the body cap and whether Host and TLS are checked, the CORS
middleware (app/http/cors.py) whether browser-based clients may call it, and the metadata
document (app/oauth/metadata.py) which RFC 8414 field names its URL. Routes use these paths.
Paths are below the issuer's path; one ending in "/" covers everything under it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    path: str
    # Browser-based MCP clients call it from another origin: CORS without credentials.
    cors: bool = False
    # Its body is capped by OSTIARY_MAX_BODY_PROTOCOL (small JSON or forms), not OSTIARY_MAX_BODY.
    protocol_body: bool = False
    # Orchestrator probes come straight to the container over plain http with any Host: no
    # Host allow-list and no TLS requirement (/metrics has its own network allow-list).
    probe: bool = False
    # The RFC 8414 §2 metadata field that publishes its URL.
    metadata_field: str | None = None


WELL_KNOWN = Endpoint("/.well-known/", cors=True)
AUTHORIZE = Endpoint("/authorize", metadata_field="authorization_endpoint")
TOKEN = Endpoint("/token", cors=True, protocol_body=True, metadata_field="token_endpoint")
JWKS = Endpoint("/jwks", cors=True, metadata_field="jwks_uri")
REGISTER = Endpoint("/register", cors=True, protocol_body=True, metadata_field="registration_endpoint")
CLIENT_CONFIGURATION = Endpoint("/register/", cors=True, protocol_body=True)  # RFC 7592
REVOKE = Endpoint("/revoke", cors=True, protocol_body=True, metadata_field="revocation_endpoint")
# Introspection is for resource servers, never for browsers (RFC 7662 §4).
INTROSPECT = Endpoint("/introspect", protocol_body=True, metadata_field="introspection_endpoint")
USERINFO = Endpoint("/userinfo", cors=True, metadata_field="userinfo_endpoint")
# What each scope of an MCP server includes, for resource servers (docs/decisions.md#scope-hierarchy).
RESOURCE_SCOPES = Endpoint("/resources/scopes")
HEALTHZ = Endpoint("/healthz", probe=True)
READYZ = Endpoint("/readyz", probe=True)
METRICS = Endpoint("/metrics", probe=True)

ENDPOINTS = (
    WELL_KNOWN,
    AUTHORIZE,
    TOKEN,
    JWKS,
    REGISTER,
    CLIENT_CONFIGURATION,
    REVOKE,
    INTROSPECT,
    USERINFO,
    RESOURCE_SCOPES,
    HEALTHZ,
    READYZ,
    METRICS,
)
_EXACT = {e.path: e for e in ENDPOINTS if not e.path.endswith("/")}
_PREFIXES = [e for e in ENDPOINTS if e.path.endswith("/")]
PAGE = Endpoint("")  # everything else: browser pages, the console


def endpoint_for(path: str) -> Endpoint:
    """The endpoint that serves `path` (below the issuer's path), or PAGE."""
    found = _EXACT.get(path)
    if found is not None:
        return found
    for endpoint in _PREFIXES:
        if path.startswith(endpoint.path):
            return endpoint
    return PAGE
