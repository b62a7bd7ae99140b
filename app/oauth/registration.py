"""Dynamic client registration (RFC 7591), on authlib's ClientRegistrationEndpoint.

MCP clients register themselves with whatever metadata their SDK sends; this accepts what they
send, refuses what is unsafe (redirect URIs above all), and fills in what they leave out.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from authlib.oauth2.rfc6749 import AccessDeniedError
from authlib.oauth2.rfc6749.requests import JsonRequest
from authlib.oauth2.rfc6750 import InvalidTokenError
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint, InvalidClientMetadataError
from authlib.oauth2.rfc7591.errors import InvalidRedirectURIError
from authlib.oauth2.rfc7592 import ClientConfigurationEndpoint as _ClientConfigurationEndpoint

from app.infra.db import now
from app.models.client import KIND_DYNAMIC
from app.oauth.clients import OAuthClient
from app.oauth.errors import safe_description
from app.oauth.redirect_uris import InvalidRedirectUri, is_loopback_redirect, validate_registered
from app.oauth.scopes import InvalidScope, parse
from app.oauth.server import current_db
from app.security.secrets import new_token
from app.security.text import invisible_character
from app.services import clients
from app.settings import NATIVE_APP_SCHEMES
from app.stores import clients as store

AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
GRANT_TYPES = ("authorization_code", "refresh_token")
MAX_REDIRECT_URIS = 30
MAX_STRING = 2000
URL_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")
STRING_FIELDS = ("client_name", "software_id", "software_version", "scope", "application_type")


def _bad(description: str) -> InvalidClientMetadataError:
    return InvalidClientMetadataError(description)


def client_metadata(data: object, native_schemes: Collection[str] = NATIVE_APP_SCHEMES) -> dict[str, Any]:
    """The metadata to register: validated, defaults filled in, unsupported values dropped.

    Raises InvalidRedirectURIError / InvalidClientMetadataError (RFC 7591 §3.2.2).
    """
    if not isinstance(data, dict):
        raise _bad("The registration request must be a JSON object.")
    meta = dict(data)
    for secret_field in ("client_id", "client_secret", "registration_access_token", "registration_client_uri"):
        meta.pop(secret_field, None)  # assigned by the server, never taken from the client

    uris = meta.get("redirect_uris")
    # OAuth 2.1 §2.3: redirect URIs must be registered for the authorization code grant.
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise InvalidRedirectURIError("'redirect_uris' must be a non-empty array of URIs.")
    if len(uris) > MAX_REDIRECT_URIS:
        raise InvalidRedirectURIError(f"At most {MAX_REDIRECT_URIS} redirect URIs.")
    try:
        meta["redirect_uris"] = list(dict.fromkeys(validate_registered(u, native_schemes) for u in uris))
    except InvalidRedirectUri as exc:
        raise InvalidRedirectURIError(safe_description(str(exc))) from None

    for name in STRING_FIELDS:
        if name in meta and meta[name] is not None and (not isinstance(meta[name], str) or len(meta[name]) > MAX_STRING):
            raise _bad(f"'{name}' must be a string of at most {MAX_STRING} characters.")
        if meta.get(name) is None:
            meta.pop(name, None)
        elif (hidden := invisible_character(meta[name])) is not None:
            # Shown on the consent page: no bidi override or line break may change how it reads.
            raise _bad(f"'{name}' must not contain control, format or separator characters ({hidden}).")
    for name in URL_FIELDS:
        value = meta.get(name)
        if value is None:
            meta.pop(name, None)
        elif not isinstance(value, str) or not value.startswith("https://") or len(value) > MAX_STRING:
            meta.pop(name, None)  # a bad logo or homepage link is dropped, not fatal
    if "dpop_bound_access_tokens" in meta and not isinstance(meta["dpop_bound_access_tokens"], bool):
        raise _bad("'dpop_bound_access_tokens' must be a boolean (RFC 9449 section 5.2).")
    if "contacts" in meta and not (isinstance(meta["contacts"], list) and all(isinstance(c, str) for c in meta["contacts"])):
        raise _bad("'contacts' must be an array of strings.")

    method = meta.get("token_endpoint_auth_method") or "none"  # MCP: public clients by default
    if method not in AUTH_METHODS:
        raise _bad(f"'token_endpoint_auth_method' must be one of {', '.join(AUTH_METHODS)}.")
    meta["token_endpoint_auth_method"] = method

    grant_types = meta.get("grant_types", list(GRANT_TYPES))
    if not isinstance(grant_types, list) or not all(isinstance(g, str) for g in grant_types):
        raise _bad("'grant_types' must be an array of strings.")
    grant_types = [g for g in dict.fromkeys(grant_types) if g in GRANT_TYPES]
    if "authorization_code" not in grant_types:
        raise _bad("This server issues tokens through the authorization_code grant; register it.")
    meta["grant_types"] = grant_types

    response_types = meta.get("response_types", ["code"])
    if not isinstance(response_types, list) or "code" not in response_types:
        raise _bad("'response_types' must include 'code' (the only response type of OAuth 2.1).")
    meta["response_types"] = ["code"]

    if "scope" in meta:
        try:
            parse(meta["scope"])
        except InvalidScope as exc:
            raise _bad(safe_description(str(exc))) from None
    app_type = meta.get("application_type")
    if app_type is None:
        # Quirk: MCP SDKs often omit it; a client whose redirects are all loopback is a native app.
        app_type = (
            "native" if all(is_loopback_redirect(u) or not u.startswith("https://") for u in meta["redirect_uris"]) else "web"
        )
    elif app_type not in ("web", "native"):
        raise _bad("'application_type' must be 'web' or 'native'.")
    elif app_type == "web" and any(not u.startswith(("https://", "http://")) for u in meta["redirect_uris"]):
        # RFC 8252 §7.1: private-use URI schemes are for native apps.
        raise InvalidRedirectURIError("A web client's redirect URIs must be https (private-use schemes are for native apps).")
    meta["application_type"] = app_type
    return meta


REGISTRATION_TOKEN_PREFIX = "ostrat_"


def bearer(request: JsonRequest) -> str | None:
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value and len(value) <= 200 else None


class RegistrationEndpoint(ClientRegistrationEndpoint):
    def authenticate_token(self, request: JsonRequest) -> bool:
        runtime = self.server
        if runtime.settings.registration == "open":
            return True  # MCP clients need open registration
        token = bearer(request)
        # RFC 7591 §3: with an initial access token required, a missing or bad one is a 401.
        if token is None or not store.use_initial_token(current_db(), runtime.keyring.hashes(token), now()):
            raise InvalidTokenError(description="A valid initial access token is required to register.")
        return True

    def extract_client_metadata(self, request: JsonRequest) -> dict[str, Any]:
        return client_metadata(request.payload.data, self.server.settings.native_app_schemes)

    def get_server_metadata(self) -> dict[str, Any]:
        return {}

    def create_registration_response(self, request: JsonRequest) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        if not self.authenticate_token(request):
            raise AccessDeniedError()
        meta = self.extract_client_metadata(request)
        info: dict[str, Any] = {"client_id": clients.new_client_id(), "client_id_issued_at": int(time.time())}
        if meta["token_endpoint_auth_method"] != "none":
            info["client_secret"] = clients.new_secret()
            info["client_secret_expires_at"] = 0  # RFC 7591 §3.2.1: 0 means it does not expire
        # RFC 7592 §3: where and with what the client manages its registration; the token's hash
        # goes into the same INSERT as the client.
        token = new_token(REGISTRATION_TOKEN_PREFIX)
        client = clients.register(
            current_db(),
            self.server.keyring,
            meta,
            client_id=info["client_id"],
            issued_at=info["client_id_issued_at"],
            secret=info.get("client_secret"),
            registration_token_hash=self.server.keyring.hash(token),
        )
        management = {
            "registration_client_uri": f"{self.server.issuer}/register/{quote(client.id, safe='')}",
            "registration_access_token": token,
        }
        body = {**meta, **info, **management}
        # RFC 7591 §3.2.1: 201 with every registered field; secrets make it no-store.
        return 201, body, [("Cache-Control", "no-store"), ("Pragma", "no-cache")]


def _path_client_id(request: JsonRequest) -> str:
    return unquote(urlsplit(request.uri).path.rstrip("/").rsplit("/", 1)[-1])


@dataclass
class RegistrationToken:
    client_id: str

    def check_client(self, client: OAuthClient) -> bool:
        return client.client_id == self.client_id


class ClientConfigurationEndpoint(_ClientConfigurationEndpoint):
    """RFC 7592: read, update and delete a dynamically registered client with its
    registration access token."""

    def authenticate_token(self, request: JsonRequest) -> RegistrationToken:
        token = bearer(request)
        row = store.by_registration_token(current_db(), self.server.keyring.hashes(token)) if token else None
        # RFC 7592 §2: an invalid registration access token gets 401 (RFC 6750 §3.1); another
        # client's token is not valid for this client's URI either.
        if row is None or row.id != _path_client_id(request):
            raise InvalidTokenError(description="The registration access token is missing or invalid.")
        return RegistrationToken(row.id)

    def authenticate_client(self, request: JsonRequest) -> OAuthClient | None:
        row = store.get(current_db(), _path_client_id(request))
        if row is None or row.kind != KIND_DYNAMIC:
            return None
        return OAuthClient(row, self.server.keyring)

    def revoke_access_token(self, request: JsonRequest, token: RegistrationToken) -> None:
        pass  # the token belongs to no existing client: nothing to revoke

    def check_permission(self, client: OAuthClient, request: JsonRequest) -> bool:
        return True

    def get_server_metadata(self) -> dict[str, Any]:
        return {}

    def extract_client_metadata(self, request: JsonRequest) -> dict[str, Any]:
        data = dict(request.payload.data)
        data.pop("client_id", None)
        data.pop("client_secret", None)
        return client_metadata(data, self.server.settings.native_app_schemes)

    def introspect_client(self, client: OAuthClient) -> dict[str, Any]:
        row = client.row
        return {**row.client_metadata, "client_id": row.id, "client_id_issued_at": row.created_at}

    def generate_client_registration_info(self, client: OAuthClient, request: JsonRequest) -> dict[str, str | None]:
        return {
            "registration_client_uri": f"{self.server.issuer}/register/{quote(client.client_id, safe='')}",
            "registration_access_token": bearer(request),
        }

    def create_read_client_response(
        self, client: OAuthClient, request: JsonRequest
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        status, body, _ = super().create_read_client_response(client, request)
        return status, body, [("Cache-Control", "no-store"), ("Pragma", "no-cache")]

    def update_client(self, client: OAuthClient, client_metadata: dict[str, Any], request: JsonRequest) -> OAuthClient:
        row = client.row
        if client_metadata["token_endpoint_auth_method"] != row.token_endpoint_auth_method:
            raise InvalidClientMetadataError("The token_endpoint_auth_method cannot change.")
        clients.update_registration(current_db(), row, client_metadata)
        return client

    def delete_client(self, client: OAuthClient, request: JsonRequest) -> None:
        clients.delete_client(current_db(), client.row, reason="self")
