"""The wiring: everything built once at startup and shared by every request, as typed fields.

`build_runtime` is the one place that assembles it; nothing else reads a bag of named objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
from jinja2 import Environment
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.infra.db import make_engine, make_sessionmaker
from app.infra.fetch import Fetcher, guarded_transport
from app.infra.templates import make_templates
from app.oauth import client_assertion
from app.oauth.authorization_code import AuthorizationCodeGrant
from app.oauth.catalogue import Catalogue
from app.oauth.cimd import MetadataDocuments
from app.oauth.client_credentials import ClientCredentialsGrant
from app.oauth.id_jag import JwtBearerGrant
from app.oauth.introspection import IntrospectionEndpoint
from app.oauth.metadata import MetadataCache
from app.oauth.pkce import S256CodeChallenge
from app.oauth.refresh import RefreshTokenGrant
from app.oauth.registration import ClientConfigurationEndpoint, RegistrationEndpoint
from app.oauth.revocation import RevocationEndpoint
from app.oauth.server import OstiaryServer
from app.security.hosts import network_check
from app.security.ratelimit import RateLimiter
from app.security.secrets import Keyring
from app.services import audit, keys
from app.services.jobs import Jobs
from app.services.keys import KeyCache
from app.settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keyring: Keyring
    keys: KeyCache  # the signing keys, loaded once and reloaded every few seconds
    templates: Environment
    catalogue: Catalogue  # MCP servers (resources) and their scopes, cached
    limiter: RateLimiter
    server: OstiaryServer  # the authlib authorization server with our grants and endpoints
    metadata: MetadataCache  # the RFC 8414 document, serialised
    metrics_networks: Callable[[str], bool]  # who may read /metrics

    def jobs(self) -> Jobs:
        """What the periodic jobs need (app/services/jobs.py)."""
        return Jobs(self.sessions, self.settings, self.keyring, self.keys)

    def invalidate_catalogue(self) -> None:
        """An MCP server or its scopes changed: this replica sees it at once (others within
        the catalogue's refresh interval)."""
        self.catalogue.invalidate()
        self.metadata.invalidate()


def build_runtime(settings: Settings, *, fetch_transport: httpx.BaseTransport | None = None) -> Runtime:
    """Connect, make sure the signing keys exist, and build every shared object. The outbound
    transport for Client ID Metadata Documents is replaceable (tests fake the network there)."""
    engine = make_engine(settings.database_url.get_secret_value())
    sessions = make_sessionmaker(engine)
    keyring = Keyring(settings.keyring())
    keys.ensure_keys(sessions, settings, keyring)
    key_cache = KeyCache(sessions, settings, keyring)
    catalogue = Catalogue(sessions, settings)
    limiter = RateLimiter(
        settings.redis_url.get_secret_value() if settings.redis_url else None,
        enabled=settings.rate_limits_enabled,
        on_refused=lambda name, subject, wait: audit.record_now(
            sessions, "rate_limit.hit", limit=name, subject=subject, retry_after=wait
        ),
        exempt=network_check(settings.rate_limit_exempt),
    )
    transport = fetch_transport or guarded_transport(
        allowed_hosts=settings.cimd_allowed_hosts, ca_file=str(settings.cimd_ca_file) if settings.cimd_ca_file else None
    )
    fetcher = Fetcher(
        transport,
        settings.cimd_timeout,
        max_total=settings.cimd_max_fetches,
        max_per_host=settings.cimd_max_fetches_per_host,
    )
    documents = MetadataDocuments(fetcher, settings)
    server = OstiaryServer(settings=settings, keyring=keyring, keys=key_cache, catalogue=catalogue, documents=documents)
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge()])
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(JwtBearerGrant)
    # RFC 7523 §2.2 client authentication (authlib's own uses its deprecated JOSE module).
    server.register_client_auth_method(
        client_assertion.METHOD, lambda _query, request: client_assertion.authenticate(server, request)
    )
    for endpoint in (RegistrationEndpoint, ClientConfigurationEndpoint, RevocationEndpoint, IntrospectionEndpoint):
        server.register_endpoint(endpoint(server))
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        keyring=keyring,
        keys=key_cache,
        templates=make_templates(),
        catalogue=catalogue,
        limiter=limiter,
        server=server,
        metadata=MetadataCache(settings, server, sessions),
        metrics_networks=network_check(settings.metrics_networks),
    )
