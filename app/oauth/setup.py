"""Assembling the authorization server once at startup: grants, PKCE, endpoints, caches."""

from __future__ import annotations

import httpx

from app.infra.fetch import Fetcher, guarded_transport
from app.oauth.authorization_code import AuthorizationCodeGrant
from app.oauth.catalogue import Catalogue
from app.oauth.cimd import MetadataDocuments
from app.oauth.introspection import IntrospectionEndpoint
from app.oauth.pkce import S256CodeChallenge
from app.oauth.refresh import RefreshTokenGrant
from app.oauth.registration import ClientConfigurationEndpoint, RegistrationEndpoint
from app.oauth.revocation import RevocationEndpoint
from app.oauth.server import OstiaryServer
from app.runtime import Runtime
from app.security.hosts import network_check
from app.security.ratelimit import RateLimiter
from app.services import audit


def build_server(runtime: Runtime, fetch_transport: httpx.BaseTransport | None = None) -> OstiaryServer:
    settings = runtime.settings
    runtime.extras["catalogue"] = Catalogue(runtime.sessions, settings)
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    runtime.extras["limiter"] = RateLimiter(
        redis_url,
        enabled=settings.rate_limits_enabled,
        on_refused=lambda name, subject, wait: audit.record_now(
            runtime.sessions, "rate_limit.hit", limit=name, subject=subject, retry_after=wait
        ),
        exempt=network_check(settings.rate_limit_exempt),
    )
    transport = fetch_transport or guarded_transport(
        allowed_hosts=settings.cimd_allowed_hosts, ca_file=str(settings.cimd_ca_file) if settings.cimd_ca_file else None
    )
    documents = MetadataDocuments(Fetcher(transport, settings.cimd_timeout), settings)
    runtime.extras["client_resolver"] = documents.resolve
    server = OstiaryServer(runtime)
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge()])
    server.register_grant(RefreshTokenGrant)
    server.register_endpoint(RegistrationEndpoint(server))
    server.register_endpoint(ClientConfigurationEndpoint(server))
    server.register_endpoint(RevocationEndpoint(server))
    server.register_endpoint(IntrospectionEndpoint(server))
    runtime.extras["metadata_extensions"] = {
        # RFC 9207 §3: every authorization response carries `iss`.
        "authorization_response_iss_parameter_supported": True,
        # OIDC Discovery §3 (the subset we serve: id_token and userinfo).
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [runtime.settings.signing_alg],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "preferred_username"],
        "prompt_values_supported": ["none", "login", "consent"],
    }
    if settings.cimd_enabled:
        # MCP 2025-11-25: clients may identify with a Client ID Metadata Document URL.
        runtime.extras["metadata_extensions"]["client_id_metadata_document_supported"] = True
    runtime.extras["metrics_networks"] = network_check(settings.metrics_networks)
    runtime.extras["server"] = server
    return server
