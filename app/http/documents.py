"""The public documents (RFC 8414 metadata, OIDC discovery, the JWKS) answered from their
precomputed bytes, in front of the router.

Every MCP client and resource server reads them, and their bytes are built once (the metadata
when the scope catalogue changes, the JWKS when keys change): what a GET costs is the framework
around them, so they are served by this pure-ASGI app inside the edge, request and CORS
middleware (which still apply) but before FastAPI's routing and dependency machinery
(docs/decisions.md#public-documents-bypass-the-router). Anything else, and any other method
(405 from the router), goes on to the application. Bytes that are due for a rebuild (which reads
the database) are rebuilt in the thread pool, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from app.http import endpoints


@dataclass(frozen=True)
class Document:
    route: str  # the route template, for metrics and the access log (app/http/middleware.py)
    cached: Callable[[], bytes | None]  # the bytes if they need no rebuild (no I/O)
    body: Callable[[], bytes]  # the bytes, rebuilt first if due (may read the database)
    content_type: bytes
    cache_control: bytes

    @property
    def path(self) -> str:  # what app/http/middleware.route_label reads from scope["route"]
        return self.route


class PublicDocuments:
    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        metadata: tuple[Callable[[], bytes | None], Callable[[], bytes]],
        jwks: tuple[Callable[[], bytes | None], Callable[[], bytes]],
        jwks_max_age: int,
    ):
        """`metadata` and `jwks`: (the bytes if fresh, else None; the bytes, rebuilt if due)."""
        self.app = app
        meta = (*metadata, b"application/json", b"public, max-age=300")
        jwks_doc = (*jwks, b"application/jwk-set+json", f"public, max-age={jwks_max_age}".encode())
        self.documents = {
            # RFC 8414 §3.1: with an issuer path, the well-known segment goes between host and path.
            f"/.well-known/oauth-authorization-server{prefix}": Document(
                "/.well-known/oauth-authorization-server{path:path}", *meta
            ),
            f"/.well-known/openid-configuration{prefix}": Document("/.well-known/openid-configuration{path:path}", *meta),
            prefix + endpoints.JWKS.path: Document(prefix + endpoints.JWKS.path, *jwks_doc),
        }
        if prefix:
            # OIDC Discovery §4 appends the well-known segment to an issuer that has a path.
            route = prefix + "/.well-known/openid-configuration"
            self.documents[route] = Document(route, *meta)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        document = self.documents.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if document is None:
            return await self.app(scope, receive, send)
        scope["route"] = document
        body = document.cached()
        if body is None:
            body = await run_in_threadpool(document.body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", document.content_type),
                    (b"cache-control", document.cache_control),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
