"""authlib's AuthorizationServer, adapted to FastAPI and to our stores: the one adapter module.

Built once at startup (app/runtime.py). authlib is synchronous: protocol routes are plain `def`
routes running in the thread pool, and the request's database session reaches authlib's hooks
through a context variable (`query_client` receives no request).

authlib does the generic machinery: finding the grant for a request, client authentication
(client_secret_basic, client_secret_post, none), authorization-request validation up to a
trusted redirect URI, the RFC 7591/7592/7009/7662 endpoints, and its OAuth2Error hierarchy.
Where it is less strict than OAuth 2.1 or MCP, or does not fit, we override, and say so:
- `get_authorization_grant`, `get_token_grant`, `authenticate_client`: three authlib errors
  that would be 500s or the wrong error code (each commented below).
- The grants' `create_token_response`: authlib's token generator cannot set `aud` to the
  resource (RFC 8707, RFC 9068), and rotation with a grace window and reuse detection
  (OAuth 2.1 §4.3.1) does not fit its save/revoke hooks; tokens are issued by app/oauth/tokens.py
  and persisted by the grants, so `save_token` is never called.
- `handle_response`/`handle_error_response`: Starlette responses, 401 for invalid_client, and
  `iss` on every error redirect (authlib's RFC 9207 extension cannot touch a Starlette response).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Request,
    UnsupportedResponseTypeError,
)
from authlib.oauth2.rfc6749.requests import JsonPayload, JsonRequest, OAuth2Payload
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import Headers

from app.oauth.clients import OAuthClient
from app.oauth.dpop import HEADER as DPOP_HEADER
from app.oauth.dpop import InvalidDPoPProofError, Proof, requires_proof, token_request_proof
from app.oauth.errors import NO_STORE, MissingGrantType, error_redirect_url, safe_description
from app.oauth.jwts import ALGORITHMS

if TYPE_CHECKING:
    from app.models import AuthorizationCode, RefreshToken
    from app.oauth.catalogue import Catalogue, ResourceInfo
    from app.oauth.cimd import MetadataDocuments
    from app.security.secrets import Keyring
    from app.services.keys import KeyCache
    from app.settings import Settings

_db: ContextVar[Session] = ContextVar("oauth_db")
# Only the authorization endpoint may fetch a client's metadata document; /token uses the copy
# (docs/decisions.md#the-token-endpoint-never-fetches-metadata-documents).
_fetch_documents: ContextVar[bool] = ContextVar("fetch_documents", default=False)


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


class Payload(OAuth2Payload):
    """Parameters of a request (query or form), keeping repeated ones to detect them."""

    def __init__(self, multi: list[tuple[str, str]]):
        self._datalist: dict[str, list[str]] = {}
        for key, value in multi:
            self._datalist.setdefault(key, []).append(value)
        self._data = {k: v[0] for k, v in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class Request(OAuth2Request):
    """An authorization or token request, with what our grants learn about it on the way."""

    # Set while validating (app/oauth/authorization_code.py, refresh.py):
    resource: ResourceInfo  # the RFC 8707 resource, resolved from the catalogue
    scopes: list[str]  # the scopes asked for (authorize) or kept (refresh)
    prompts: frozenset[str]  # OIDC Core §3.1.2.1 prompt values
    max_age: int | None  # OIDC Core §3.1.2.1: the oldest sign-in (seconds) the client accepts
    authorization_code: AuthorizationCode
    refresh_token: RefreshToken
    # Set when the user has decided (app/oauth/authorize.py), for the code to carry:
    auth_time: int
    consent_id: int | None
    provider_name: str  # the identity provider of an ID-JAG (app/oauth/id_jag.py)
    # Set at the token endpoint once the client is authenticated (app/oauth/dpop.py):
    dpop: Proof | None
    dpop_checked: bool

    def __init__(self, method: str, uri: str, headers: Headers, params: list[tuple[str, str]], form: bool):
        super().__init__(method, uri, headers=headers)
        self.payload = Payload(params)
        self._is_form = form
        self.consent_id = None
        self.dpop = None
        self.dpop_checked = False

    @property
    def args(self) -> dict[str, str]:
        return {} if self._is_form else self.payload.data

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data if self._is_form else {}


class JsonBody(JsonPayload):
    def __init__(self, data: dict[str, Any]):
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        return self._data


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
        # consent id -> when this process last recorded its use (app/oauth/tokens.touch_usage)
        self.consents_touched: dict[int, int] = {}
        from app.oauth.upstream import Upstreams

        self.upstreams = Upstreams(documents.fetcher)  # identity providers' metadata and keys

    # -- authlib's framework hooks ------------------------------------------------------------

    def query_client(self, client_id: str | None) -> OAuthClient | None:
        if not client_id or len(client_id) > 2048:
            return None
        # Registered clients from the table; https client_ids through their metadata documents.
        row = self.documents.resolve(current_db(), client_id, refresh=_fetch_documents.get())
        return OAuthClient(row, self.keyring) if row is not None else None

    def get_authorization_grant(self, request: OAuth2Request) -> Any:
        response_type = request.payload.data.get("response_type")
        if response_type and safe_description(response_type) != response_type:
            # authlib quotes response_type in error_description, whose constructor refuses `"`
            # and `\` (RFC 6749 5.2) with a ValueError: a 500 instead of unsupported_response_type.
            request.payload.data["response_type"] = safe_description(response_type)
        try:
            return super().get_authorization_grant(request)
        except UnsupportedResponseTypeError as error:
            if error.redirect_uri:
                # authlib looked the client up to trust its redirect URI; whether the client is
                # trusted decides if the error may redirect before sign-in (app/oauth/authorize.py).
                request.client = self.query_client(request.payload.client_id)
            if response_type:
                raise
            # RFC 6749 §4.1.2.1: a missing required parameter is invalid_request (by redirect
            # once the redirect URI is trusted, as authlib decided).
            raise InvalidRequestError("Missing 'response_type'.", state=error.state, redirect_uri=error.redirect_uri) from None

    def get_token_grant(self, request: OAuth2Request) -> Any:
        if not request.payload.data.get("grant_type"):
            raise MissingGrantType(None)  # authlib would say unsupported_grant_type
        return super().get_token_grant(request)

    def authenticate_client(self, request: OAuth2Request, methods: list[str], endpoint: str = "token") -> Any:
        try:
            client = super().authenticate_client(request, methods, endpoint)
        except UnicodeDecodeError:
            # authlib decodes HTTP Basic credentials as UTF-8 and lets the error escape (a 500).
            raise InvalidClientError(description="Malformed client credentials.") from None
        if endpoint == "token" and isinstance(request, Request) and not request.dpop_checked:
            self._check_dpop(request, client)
        return client

    def _check_dpop(self, request: Request, client: OAuthClient) -> None:
        # RFC 9449 §5: the proof of a token request, checked once the client is known; every
        # grant authenticates its client here, so every grant gets sender-constrained tokens.
        request.dpop_checked = True
        request.dpop = token_request_proof(
            current_db(),
            self.keyring,
            request.headers.getlist(DPOP_HEADER),
            url=request.uri,
            require_nonce=self.settings.dpop_nonce,
        )
        if request.dpop is None and requires_proof(
            client.row, public_clients_must=self.settings.dpop_required_for_public_clients
        ):
            raise InvalidDPoPProofError("This client must send a DPoP proof (RFC 9449 section 5.2).")

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        raise NotImplementedError("the grants persist what they issue (see the module docstring)")

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        raise TypeError("build requests with oauth_request()")

    def create_json_request(self, request: Any) -> JsonRequest:
        if isinstance(request, JsonRequest):
            return request
        raise TypeError("build requests with json_request()")

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        headers = dict(headers or [])
        if status in (301, 302, 303, 307) and "Location" in headers:
            return RedirectResponse(headers.pop("Location"), status_code=302, headers=headers)
        if isinstance(body, dict):
            headers.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=headers)
        return Response(body or b"", status_code=status, headers=headers)

    def handle_error_response(self, request: OAuth2Request, error: OAuth2Error) -> Response:
        if error.redirect_uri:
            return RedirectResponse(error_redirect_url(error, self.issuer), status_code=302)
        status, body, headers = error(self.get_error_uri(request, error))
        headers = dict(headers)
        if isinstance(error, InvalidClientError):
            # RFC 6749 §5.2: 401 for a client that failed to authenticate; MCP clients re-register
            # on it (docs/decisions.md#unknown-or-deleted-clients-get-a-401).
            status = 401
            headers.setdefault("WWW-Authenticate", 'Basic realm="ostiary"')
        headers.update(NO_STORE)
        headers.pop("Content-Type", None)
        return JSONResponse(dict(body), status_code=status, headers=headers)

    # -- what the metadata document says we do ---------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        grant_types: list[str] = []
        response_types: list[str] = []
        auth_methods: list[str] = []
        for grant_cls, _ in self._token_grants:
            grant_types.append(grant_cls.GRANT_TYPE)
            auth_methods += [m for m in grant_cls.TOKEN_ENDPOINT_AUTH_METHODS if m not in auth_methods]
        for grant_cls, _ in self._authorization_grants:
            response_types += sorted(grant_cls.RESPONSE_TYPES)
        doc: dict[str, Any] = {
            "response_types_supported": response_types,
            "response_modes_supported": ["query"],
            "grant_types_supported": grant_types,
            "token_endpoint_auth_methods_supported": auth_methods,
        }
        for _, extensions in self._authorization_grants:
            for ext in extensions or []:
                if hasattr(ext, "SUPPORTED_CODE_CHALLENGE_METHOD"):
                    doc["code_challenge_methods_supported"] = list(ext.SUPPORTED_CODE_CHALLENGE_METHOD)
        for name, endpoints in self._endpoints.items():
            field = {"revocation": "revocation_endpoint", "introspection": "introspection_endpoint"}.get(name)
            if field:
                for endpoint in endpoints:
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
                # OIDC Discovery §3: request_uri_parameter_supported defaults to true; say no.
                "request_parameter_supported": False,
                "request_uri_parameter_supported": False,
            }
        )
        if "urn:ietf:params:oauth:grant-type:jwt-bearer" in grant_types:
            # MCP enterprise-managed authorization: ID-JAGs are accepted at the token endpoint.
            doc["authorization_grant_profiles_supported"] = ["urn:ietf:params:oauth:grant-profile:id-jag"]
        if "private_key_jwt" in auth_methods:
            doc["token_endpoint_auth_signing_alg_values_supported"] = list(ALGORITHMS)
        # RFC 9449 §5.1: DPoP proofs are accepted, signed with these (asymmetric) algorithms.
        doc["dpop_signing_alg_values_supported"] = list(ALGORITHMS)
        if self.settings.cimd_enabled:
            # MCP 2025-11-25: clients may identify with a Client ID Metadata Document URL.
            doc["client_id_metadata_document_supported"] = True
        return doc


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


def oauth_request(method: str, url: str, headers: Headers, params: list[tuple[str, str]], *, form: bool) -> Request:
    return Request(method, url, headers, params, form)


def json_request(method: str, url: str, headers: Headers, body: dict[str, Any] | None) -> JsonRequest:
    req = JsonRequest(method, url, headers)
    req.payload = JsonBody(body if isinstance(body, dict) else {})
    return req
