"""The token, revocation, introspection and registration endpoints, answered before the router.

They are the hot path of every MCP client and resource server, and each of them is one handler
that reads the body and makes one thread-pool call: what FastAPI added around that (its routing,
exception and exit-stack middleware, the route wrappers) cost as much as the handler's own SQL.
This pure-ASGI app sits where the public documents do (app/http/documents.py): inside the request,
edge and CORS middleware, which still apply, and in front of the router
(docs/decisions.md#protocol-endpoints-bypass-the-router). A path it serves with another method
gets 405, as from the router; an exception becomes the response FastAPI's handlers would give it
(app/http/errors.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.errors import ErrorResponses

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    path: str  # the route's template, for metrics and the access log (app/http/middleware.route_label)
    handler: Handler


class ProtocolEndpoints:
    def __init__(self, app: ASGIApp, *, prefix: str, handlers: dict[str, Handler], errors: ErrorResponses):
        """`handlers`: POST handler by path below the issuer's path."""
        self.app = app
        self.routes = {prefix + path: Route(prefix + path, handler) for path, handler in handlers.items()}
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        scope["route"] = route
        request = Request(scope, receive)
        try:
            if scope["method"] != "POST":
                raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})  # RFC 9110 §15.5.6
            response = await route.handler(request)
        except Exception as exc:  # noqa: BLE001  # answered as FastAPI's handlers would; never a trace
            response = await self.errors.answer(request, exc)
        await response(scope, receive, send)
