"""Helpers for tests: data set up through the app's own stores, and the browser steps a user
takes (sign in, consent) over HTTP."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx

from app.models import Resource, ResourceScope, User
from app.security.passwords import hash_password
from app.stores import resources as resources_store
from app.stores import users as users_store
from conftest import csrf_from

PASSWORD = "correct horse battery staple"
RESOURCE = "https://mcp.example.com/mcp"
REDIRECT = "http://127.0.0.1:9876/callback"


def create_user(runtime, username: str = "alice", password: str = PASSWORD, *, admin: bool = False, groups=None) -> User:
    with runtime.sessions() as db:
        user = users_store.add(
            db, User(username=username, password_hash=hash_password(password), is_admin=admin, groups=groups or [])
        )
        db.commit()
        return user


def create_resource(
    runtime,
    uri: str = RESOURCE,
    name: str = "Example MCP",
    scopes: dict[str, str] | None = None,
    defaults: tuple[str, ...] = ("mcp:read",),
    token_ttl: int | None = None,
    groups: dict[str, list[str]] | None = None,
) -> Resource:
    scopes = scopes or {"mcp:read": "Read your notes", "mcp:write": "Change your notes"}
    with runtime.sessions() as db:
        resource = resources_store.add(
            db,
            Resource(
                uri=uri,
                name=name,
                token_ttl=token_ttl,
                scopes=[
                    ResourceScope(
                        name=n, description=d, is_default=n in defaults, position=i, allowed_groups=(groups or {}).get(n)
                    )
                    for i, (n, d) in enumerate(scopes.items())
                ],
            ),
        )
        db.commit()
    runtime.extras["catalogue"].invalidate()
    runtime.extras["metadata"].invalidate()
    return resource


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def register(client: httpx.AsyncClient, **metadata) -> dict:
    body = {"redirect_uris": [REDIRECT], "client_name": "Test MCP Client", "grant_types": ["authorization_code", "refresh_token"]}
    body.update(metadata)
    response = await client.post("/register", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def login(client: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD, next_url: str = "") -> httpx.Response:
    page = await client.get("/login", params={"next": next_url} if next_url else None)
    return await client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf_from(page.text), "next": next_url},
    )


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def authorize_params(client_id: str, challenge: str, **extra) -> dict:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": RESOURCE,
        "state": "st-" + secrets.token_hex(4),
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


async def authorize(client: httpx.AsyncClient, params: dict, *, decision: str = "allow") -> httpx.Response:
    """Follow /authorize through sign-in (already done) and consent; return the response that
    redirects to the client (or the last page)."""
    response = await client.get("/authorize", params=params)
    for _ in range(5):
        location = response.headers.get("location", "")
        if response.status_code in (302, 303) and "/consent/" in location:
            page = await client.get(location)
            if page.status_code != 200:
                return page
            response = await client.post(location, data={"decision": decision, "csrf_token": csrf_from(page.text)})
            continue
        return response
    return response


async def obtain_code(client: httpx.AsyncClient, client_id: str, **extra) -> tuple[str, str, dict]:
    """(code, verifier, params) for a signed-in browser."""
    verifier, challenge = pkce()
    params = authorize_params(client_id, challenge, **extra)
    response = await authorize(client, params)
    assert response.status_code == 302, response.text
    q = query(response.headers["location"])
    assert "code" in q, q
    return q["code"], verifier, params


async def exchange(client: httpx.AsyncClient, client_id: str, code: str, verifier: str, **extra) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }
    data.update(extra)
    return await client.post("/token", data={k: v for k, v in data.items() if v is not None})


async def refresh(client: httpx.AsyncClient, client_id: str, refresh_token: str, **extra) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    data.update(extra)
    return await client.post("/token", data={k: v for k, v in data.items() if v is not None})
