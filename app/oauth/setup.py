"""Assembling the authorization server once at startup: grants, PKCE, endpoints, caches."""

from __future__ import annotations

from app.oauth.authorization_code import AuthorizationCodeGrant
from app.oauth.catalogue import Catalogue
from app.oauth.introspection import IntrospectionEndpoint
from app.oauth.pkce import S256CodeChallenge
from app.oauth.refresh import RefreshTokenGrant
from app.oauth.registration import RegistrationEndpoint
from app.oauth.revocation import RevocationEndpoint
from app.oauth.server import OstiaryServer
from app.runtime import Runtime


def build_server(runtime: Runtime) -> OstiaryServer:
    runtime.extras["catalogue"] = Catalogue(runtime.sessions, runtime.settings)
    server = OstiaryServer(runtime)
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge()])
    server.register_grant(RefreshTokenGrant)
    server.register_endpoint(RegistrationEndpoint(server))
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
    runtime.extras["server"] = server
    return server
