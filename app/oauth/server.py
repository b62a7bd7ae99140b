"""The authlib AuthorizationServer, wired to FastAPI and to our stores.

Built once at startup. authlib is synchronous: routes are plain `def` routes running in the
thread pool, and the request's database session reaches authlib's hooks through a context
variable (`query_client` receives no request).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Request,
    UnsupportedGrantTypeError,
    UnsupportedResponseTypeError,
)
from authlib.oauth2.rfc6749.requests import JsonPayload, JsonRequest, OAuth2Payload
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import Headers

from app.oauth.clients import OAuthClient

_db: ContextVar[Session] = ContextVar("oauth_db")
# Only the authorization endpoint may fetch a client's metadata document; /token uses the copy.
_fetch_documents: ContextVar[bool] = ContextVar("fetch_documents", default=False)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

if TYPE_CHECKING:
    from app.oauth.catalogue import Catalogue
    from app.oauth.cimd import MetadataDocuments
    from app.security.secrets import Keyring
    from app.services.keys import KeyCache
    from app.settings import Settings


def current_db() -> Session:
    return _db.get()


@contextmanager
def using(db: Session, *, fetch_documents: bool = False) -> Iterator[None]:
    token = _db.set(db)
    fetch = _fetch_documents.set(fetch_documents)
    try:
        yield
    finally:
        _fetch_documents.reset(fetch)
        _db.reset(token)


def safe_description(text: str) -> str:
    """RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)[:300]


class Payload(OAuth2Payload):
    """Parameters of a request (query or form), keeping repeated ones to detect them."""

    def __init__(self, multi: list[tuple[str, str]]):
        self._datalist: dict[str, list[str]] = {}
        for key, value in multi:
            self._datalist.setdefault(key, []).append(value)
        self._data = {k: v[0] for k, v in self._datalist.items()}

    @property
    def data(self):
        return self._data

    @property
    def datalist(self):
        return self._datalist


class Request(OAuth2Request):
    def __init__(self, method: str, uri: str, headers: Headers, params: list[tuple[str, str]], form: bool):
        super().__init__(method, uri, headers=headers)
        self.payload = Payload(params)
        self._is_form = form

    @property
    def args(self):
        return {} if self._is_form else self.payload.data

    @property
    def form(self):
        return self.payload.data if self._is_form else {}


class JsonBody(JsonPayload):
    def __init__(self, data: dict):
        self._data = data

    @property
    def data(self):
        return self._data


class MissingGrantType(UnsupportedGrantTypeError):
    """RFC 6749 §5.2: a request without grant_type is invalid_request (a missing required
    parameter), not unsupported_grant_type. A subclass, because authlib's token endpoint turns
    only UnsupportedGrantTypeError from get_token_grant into an error response."""

    error = "invalid_request"

    def get_error_description(self):
        return "Missing 'grant_type'."


class OstiaryServer(AuthorizationServer):
    """The protocol core: what the grants and endpoints need, and nothing else."""

    def __init__(
        self, *, settings: Settings, keyring: Keyring, keys: KeyCache, catalogue: Catalogue, documents: MetadataDocuments
    ):
        super().__init__(scopes_supported=None)
        self.settings = settings
        self.issuer = settings.issuer
        self.keyring = keyring
        self.keys = keys
        self.catalogue = catalogue
        self.documents = documents

    # -- authlib's framework hooks ------------------------------------------------------------

    def query_client(self, client_id):
        if not client_id or len(client_id) > 2048:
            return None
        # Registered clients from the table; https client_ids through their metadata documents.
        row = self.documents.resolve(current_db(), client_id, refresh=_fetch_documents.get())
        return OAuthClient(row, self.keyring) if row is not None else None

    def get_authorization_grant(self, request):
        response_type = request.payload.data.get("response_type")
        if response_type and safe_description(response_type) != response_type:
            # authlib quotes response_type in error_description, whose constructor refuses `"`
            # and `\` (RFC 6749 5.2) with a ValueError: a 500 instead of unsupported_response_type.
            request.payload.data["response_type"] = safe_description(response_type)
        try:
            return super().get_authorization_grant(request)
        except UnsupportedResponseTypeError as error:
            if response_type:
                raise
            # RFC 6749 §4.1.2.1: a missing required parameter is invalid_request (by redirect
            # once the redirect URI is trusted, as authlib decided).
            raise InvalidRequestError("Missing 'response_type'.", state=error.state, redirect_uri=error.redirect_uri) from None

    def get_token_grant(self, request):
        if not request.payload.data.get("grant_type"):
            raise MissingGrantType(None)
        return super().get_token_grant(request)

    def authenticate_client(self, request, methods, endpoint="token"):
        try:
            return super().authenticate_client(request, methods, endpoint)
        except UnicodeDecodeError:
            # authlib decodes HTTP Basic credentials as UTF-8 and lets the error escape (a 500).
            raise InvalidClientError(description="Malformed client credentials.") from None

    def save_token(self, token, request):  # tokens are persisted by the grants themselves
        raise NotImplementedError

    def send_signal(self, name, *args, **kwargs):
        pass

    def create_oauth2_request(self, request) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        raise TypeError("build requests with oauth_request()")

    def create_json_request(self, request) -> JsonRequest:
        if isinstance(request, JsonRequest):
            return request
        raise TypeError("build requests with json_request()")

    def handle_response(self, status, body, headers):
        headers = dict(headers or [])
        if status in (301, 302, 303, 307) and "Location" in headers:
            return RedirectResponse(headers.pop("Location"), status_code=302, headers=headers)
        if isinstance(body, dict):
            headers.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=headers)
        return Response(body or b"", status_code=status, headers=headers)

    def handle_error_response(self, request, error: OAuth2Error):
        if error.redirect_uri:
            return RedirectResponse(error_redirect_url(error, self.issuer), status_code=302)
        status, body, headers = error(self.get_error_uri(request, error))
        headers = dict(headers)
        if isinstance(error, InvalidClientError):
            # RFC 6749 §5.2: 401 for a client that failed to authenticate; MCP clients re-register
            # on it (a pruned or unknown client_id).
            status = 401
            headers.setdefault("WWW-Authenticate", 'Basic realm="ostiary"')
        headers.update(NO_STORE)
        headers.pop("Content-Type", None)
        return JSONResponse(dict(body), status_code=status, headers=headers)

    # -- what the metadata document says we do ---------------------------------------------------

    def capabilities(self) -> dict:
        grant_types, response_types, auth_methods = [], [], []
        for grant_cls, extensions in self._token_grants:
            grant_types.append(grant_cls.GRANT_TYPE)
            auth_methods += [m for m in grant_cls.TOKEN_ENDPOINT_AUTH_METHODS if m not in auth_methods]
        for grant_cls, _ in self._authorization_grants:
            response_types += sorted(grant_cls.RESPONSE_TYPES)
        doc = {
            "response_types_supported": response_types,
            "response_modes_supported": ["query"],
            "grant_types_supported": grant_types,
            "token_endpoint_auth_methods_supported": auth_methods,
        }
        for grant_cls, extensions in self._authorization_grants:
            for ext in extensions or []:
                if hasattr(ext, "SUPPORTED_CODE_CHALLENGE_METHOD"):
                    doc["code_challenge_methods_supported"] = list(ext.SUPPORTED_CODE_CHALLENGE_METHOD)
        for name, endpoints in self._endpoints.items():
            for endpoint in endpoints:
                field = {"revocation": "revocation_endpoint", "introspection": "introspection_endpoint"}.get(name)
                if field:
                    doc[f"{field}_auth_methods_supported"] = list(endpoint.CLIENT_AUTH_METHODS)
        doc.update(
            {
                # RFC 9207 §3: every authorization response carries `iss`.
                "authorization_response_iss_parameter_supported": True,
                # OIDC Discovery §3 (the subset we serve: id_token and userinfo).
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": [self.settings.signing_alg],
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "preferred_username"],
                "prompt_values_supported": ["none", "login", "consent"],
            }
        )
        if self.settings.cimd_enabled:
            # MCP 2025-11-25: clients may identify with a Client ID Metadata Document URL.
            doc["client_id_metadata_document_supported"] = True
        return doc


def error_redirect_url(error: OAuth2Error, issuer: str) -> str:
    """The redirect for an error once the redirect URI is trusted: `error`, `error_description`,
    `state` and, per RFC 9207 §2, `iss` (authlib's IssuerParameter extension cannot touch a
    Starlette response, so it is added here)."""
    params = [(k, v) for k, v in error.get_body() if v is not None] + [("iss", issuer)]
    return add_query(error.redirect_uri, params)


def repeated_parameter(params: list[tuple[str, str]], allowed: frozenset[str] = frozenset({"resource"})) -> str | None:
    """The first parameter sent more than once, if any. RFC 6749 §3.1/§3.2: "Request and
    response parameters MUST NOT be included more than once" (RFC 8707 §2 lets `resource`
    repeat; the grants then refuse more than one)."""
    seen: set[str] = set()
    for name, _ in params:
        if name in seen and name not in allowed:
            return name
        seen.add(name)
    return None


def add_query(uri: str, params: list[tuple[str, str]]) -> str:
    sep = "&" if "?" in uri else "?"
    return uri + sep + urlencode(params)


def oauth_request(method: str, url: str, headers: Headers, params: list[tuple[str, str]], *, form: bool) -> Request:
    return Request(method, url, headers, params, form)


def json_request(method: str, url: str, headers: Headers, body: dict | None) -> JsonRequest:
    req = JsonRequest(method, url, headers)
    req.payload = JsonBody(body if isinstance(body, dict) else {})
    return req


def dumps(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
