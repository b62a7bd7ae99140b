"""Protocol routes. Thin: each one parses the request and hands it to its module."""

from __future__ import annotations

import base64
from functools import partial
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from app.http import endpoints
from app.http.body import JsonDep, form_params, read_form, read_json
from app.http.deps import DbDep, RuntimeDep
from app.http.protocol_endpoints import Handler
from app.infra.db import now
from app.oauth import dpop, jwt_access
from app.oauth.errors import NO_STORE, dumps, safe_description
from app.oauth.jwts import ALGORITHMS
from app.oauth.server import Request as OAuthRequest
from app.oauth.server import json_request, oauth_request, repeated_parameter, using
from app.security.hosts import client_ip
from app.stores import tokens as tokens_store
from app.stores import users as users_store

router = APIRouter()
well_known_router = APIRouter()


def _metadata(request: Request) -> Response:
    body = request.app.state.runtime.metadata.body()
    return Response(body, media_type="application/json", headers={"Cache-Control": "public, max-age=300"})


@well_known_router.get("/.well-known/oauth-authorization-server{path:path}", include_in_schema=False)
@well_known_router.get("/.well-known/openid-configuration{path:path}", include_in_schema=False)
def metadata(request: Request, path: str = "") -> Response:
    # RFC 8414 §3.1: with an issuer path, the well-known segment goes between host and path.
    runtime = request.app.state.runtime
    if path != runtime.settings.issuer_path:
        return Response(
            b'{"error":"not_found","error_description":"No authorization server metadata at this path."}',
            status_code=404,
            media_type="application/json",
        )
    return _metadata(request)


@router.get("/.well-known/openid-configuration", include_in_schema=False)
def metadata_appended(request: Request) -> Response:
    # OIDC Discovery §4 appends the well-known segment to an issuer that has a path.
    return _metadata(request)


@router.get(endpoints.JWKS.path, name="jwks")
def jwks(runtime: RuntimeDep) -> Response:
    snap = runtime.keys.snapshot()
    return Response(
        snap.jwks_json,
        media_type="application/jwk-set+json",
        headers={"Cache-Control": f"public, max-age={runtime.settings.jwks_max_age}"},
    )


# -- token endpoint and friends ---------------------------------------------------------------


def _protocol_request(runtime: RuntimeDep, request: Request, form: FormData) -> OAuthRequest | Response:
    """The authlib request of a form POST, or an invalid_request response for a repeated
    parameter (RFC 6749 §3.2)."""
    params = form_params(form)
    name = repeated_parameter(params)
    if name is not None:
        return Response(
            dumps({"error": "invalid_request", "error_description": safe_description(f"Parameter '{name}' is repeated.")}),
            status_code=400,
            media_type="application/json",
            headers=NO_STORE,
        )
    return oauth_request("POST", _endpoint_url(runtime, request), request.headers, params, form=True)


def _endpoint_url(runtime: RuntimeDep, request: Request) -> str:
    # authlib refuses plain-http URLs except on loopback; the issuer is what clients called.
    return runtime.settings.issuer + request.url.path.removeprefix(runtime.settings.issuer_path)


# The token, revocation, introspection and registration endpoints are answered before the
# router (app/http/protocol_endpoints.py): each reads the body on the event loop, and everything
# else runs in one thread-pool call with a session of its own
# (docs/decisions.md#the-token-endpoint-is-one-thread-pool-call).


def protocol_handlers(runtime: RuntimeDep) -> dict[str, Handler]:
    """POST handler by path, for app/http/protocol_endpoints.py. A closed registration endpoint
    is not served at all (404 from the router)."""
    handlers: dict[str, Handler] = {
        endpoints.TOKEN.path: partial(token, runtime),
        endpoints.REVOKE.path: partial(revoke, runtime),  # RFC 7009
        endpoints.INTROSPECT.path: partial(introspect, runtime),  # RFC 7662
    }
    if runtime.settings.registration != "closed":
        handlers[endpoints.REGISTER.path] = partial(register, runtime)  # RFC 7591
    return handlers


async def token(runtime: RuntimeDep, request: Request) -> Response:
    form = await read_form(request)
    return await run_in_threadpool(_token, runtime, request, form)


def _token(runtime: RuntimeDep, request: Request, form: FormData) -> Response:
    settings = runtime.settings
    limited = rate_limited(runtime, request, settings.token_rate_per_ip, "token-ip") or rate_limited(
        # Per client_id *and* address: a metadata-document client_id (VS Code's) is shared by
        # every user of that client, who must not throttle each other.
        runtime,
        request,
        settings.token_rate_per_client,
        "token-client",
        f"{_token_client_id(request, form)} {client_ip(request)}",
    )
    if limited is not None:
        return limited
    req = _protocol_request(runtime, request, form)
    if isinstance(req, Response):
        return req
    with runtime.sessions() as db, using(db):
        response: Response = runtime.server.create_token_response(req)
        db.commit()  # also on errors: a consumed code or a revoked family must stay so
    response.headers.update(NO_STORE)  # RFC 6749 §5.1
    if settings.dpop_nonce and "dpop-nonce" not in response.headers:
        # RFC 9449 §8.2: the nonce for the client's next proof.
        response.headers["DPoP-Nonce"] = dpop.nonce_for(runtime.keyring, now())
    return response


async def revoke(runtime: RuntimeDep, request: Request) -> Response:
    form = await read_form(request)
    return await run_in_threadpool(_form_endpoint, runtime, "revocation", request, form)


async def introspect(runtime: RuntimeDep, request: Request) -> Response:
    form = await read_form(request)
    return await run_in_threadpool(_form_endpoint, runtime, "introspection", request, form)


def _form_endpoint(runtime: RuntimeDep, name: str, request: Request, form: FormData) -> Response:
    """An authlib endpoint called with a form. Its answers are never cached (RFC 7009 §2.2 and
    RFC 7662 §2.2 responses concern bearer secrets)."""
    req = _protocol_request(runtime, request, form)
    if isinstance(req, Response):
        return req
    with runtime.sessions() as db, using(db):
        response: Response = runtime.server.create_endpoint_response(name, req)
        db.commit()
    response.headers.update(NO_STORE)
    return response


def rate_limited(runtime: RuntimeDep, request: Request, rate: str, name: str, subject: str | None = None) -> Response | None:
    """429 with Retry-After and an RFC 6749 error body when `subject` (default: the caller's
    address) is over `rate`. Callers from OSTIARY_RATE_LIMIT_EXEMPT are not counted."""
    wait = runtime.limiter.hit_from(client_ip(request), rate, name, subject)
    if wait is None:
        return None
    return too_many_requests(wait)


def too_many_requests(wait: int) -> Response:
    # RFC 6585 §4: 429 with Retry-After; the body is an RFC 6749 §5.2-shaped error.
    return Response(
        dumps({"error": "temporarily_unavailable", "error_description": "Too many requests; retry later."}),
        status_code=429,
        media_type="application/json",
        headers={"Retry-After": str(wait), **NO_STORE},
    )


def _token_client_id(request: Request, form: FormData) -> str:
    """The client_id a token request names (form or HTTP Basic), for its rate limit only."""
    client_id = form.get("client_id")
    if isinstance(client_id, str) and client_id:
        return client_id[:200]
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return unquote(base64.b64decode(value.strip(), validate=True).decode().partition(":")[0])[:200]
        except (ValueError, UnicodeDecodeError):
            return "-"
    return "-"


async def register(runtime: RuntimeDep, request: Request) -> Response:
    body = await read_json(request)
    return await run_in_threadpool(_register, runtime, request, body)


def _register(runtime: RuntimeDep, request: Request, body: dict[str, Any]) -> Response:
    settings = runtime.settings
    limited = rate_limited(runtime, request, settings.registration_rate_per_ip, "register-ip") or rate_limited(
        runtime, request, settings.registration_rate_global, "register-global", "*"
    )
    if limited is not None:
        return limited
    req = json_request("POST", _endpoint_url(runtime, request), request.headers, body)
    with runtime.sessions() as db, using(db):
        response: Response = runtime.server.create_endpoint_response("client_registration", req)
        if response.status_code < 400:
            db.commit()
        else:
            db.rollback()  # refused metadata must not spend a use of the initial access token
    return response


# RFC 7592 management stays served when registration is closed: a client registered before keeps
# its registration access token, and may still read, update or delete itself. Our client ids
# have no "/", and a plain segment keeps "/register" from redirecting to "/register/".
@router.get(endpoints.CLIENT_CONFIGURATION.path + "{client_id}", name="client_configuration")
@router.delete(endpoints.CLIENT_CONFIGURATION.path + "{client_id}")
def client_configuration(client_id: str, request: Request, runtime: RuntimeDep, db: DbDep) -> Response:
    return _configure(request, runtime, db, None)


@router.put(endpoints.CLIENT_CONFIGURATION.path + "{client_id}")
def client_configuration_update(client_id: str, request: Request, runtime: RuntimeDep, db: DbDep, body: JsonDep) -> Response:
    return _configure(request, runtime, db, body)


def _configure(request: Request, runtime: RuntimeDep, db: Session, body: dict[str, Any] | None) -> Response:
    # RFC 7592 §2: the registration access token authenticates every call.
    req = json_request(request.method, _endpoint_url(runtime, request), request.headers, body)
    with using(db):
        response: Response = runtime.server.create_endpoint_response("client_configuration", req)
    db.commit()
    return response


@router.api_route(endpoints.USERINFO.path, methods=["GET", "POST"], name="userinfo")
def userinfo(request: Request, runtime: RuntimeDep, db: DbDep) -> Response:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    claims = jwt_access.decode(runtime.keys, runtime.settings.issuer, value) if scheme in ("bearer", "dpop") else None
    if claims is not None and "openid" not in claims.get("scope", "").split():
        return _bearer_error(403, "insufficient_scope", "The token lacks the openid scope.")
    if claims is None or tokens_store.is_access_token_revoked(db, claims["jti"]):
        return _bearer_error(401, "invalid_token", "The access token is invalid or expired.")
    problem = dpop.resource_request_problem(
        db,
        runtime.keyring,
        scheme=scheme,
        token=value,
        claims=claims,
        values=request.headers.getlist(dpop.HEADER),
        method=request.method,
        url=_endpoint_url(runtime, request),
    )
    db.commit()  # a proof's jti stays spent
    if problem is not None:
        if scheme == "dpop":
            return _bearer_error(401, "invalid_dpop_proof", problem, challenge="DPoP")
        return _bearer_error(401, "invalid_token", problem)
    user = users_store.get(db, claims["sub"])
    if user is None or user.disabled:
        return _bearer_error(401, "invalid_token", "The user of this token cannot sign in.")
    return Response(dumps({"sub": user.id, "preferred_username": user.username}), media_type="application/json", headers=NO_STORE)


def _bearer_error(status: int, error: str, description: str, challenge: str = "Bearer") -> Response:
    # RFC 6750 §3: the challenge names the error; RFC 9449 §7.1: a DPoP challenge names the
    # algorithms accepted for proofs.
    algs = f', algs="{" ".join(ALGORITHMS)}"' if challenge == "DPoP" else ""
    return Response(
        dumps({"error": error, "error_description": description}),
        status_code=status,
        media_type="application/json",
        headers={"WWW-Authenticate": f'{challenge} error="{error}", error_description="{description}"{algs}', **NO_STORE},
    )
