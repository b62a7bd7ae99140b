"""One pure-ASGI middleware for what every response needs: a request id, the audit context, the
browser-facing security headers on HTML pages, and the request's metrics and access-log line. It
is the outermost layer (app/main.py), so it is also the error channel of last resort: an
exception that reaches it before a response started is answered as app/http/errors.py says."""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import ErrorResponses
from app.infra import metrics
from app.services.audit import RequestContext, request_context

access_log = logging.getLogger("ostiary.access")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)  # no form-action: browsers apply it to the redirect after "Allow", which leaves for the client

HTML_HEADERS = [
    # Clickjacking: RFC 6749 §10.13, RFC 9700 §4.16.
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CSP.encode()),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
]
COMMON_HEADERS = [(b"x-content-type-options", b"nosniff")]


def route_label(scope: Scope) -> str:
    """The route's template ("/consent/{handle}"), never the raw path: paths can carry one-time
    handles and links, which must not reach metrics labels or logs."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestMiddleware:
    def __init__(self, app: ASGIApp, errors: ErrorResponses) -> None:
        self.app = app
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(8)
        client = scope.get("client")
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_context.set(RequestContext(ip=client[0] if client else None, request_id=request_id))
        status = 500
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {n.lower() for n, _ in headers}
                content_type = next((v for n, v in headers if n.lower() == b"content-type"), b"")
                extra = [*list(COMMON_HEADERS), (b"x-request-id", request_id.encode())]
                if content_type.startswith(b"text/html"):
                    extra += HTML_HEADERS
                headers += [(n, v) for n, v in extra if n not in names]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if started:
                raise
            response = await self.errors.unexpected(Request(scope, receive), exc)
            await response(scope, receive, send_with_headers)
        finally:
            request_context.reset(token)
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            metrics.observe_request(route, scope["method"], status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(
                    "request",
                    extra={
                        "fields": {
                            "method": scope["method"],
                            "route": route,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 2),
                            "ip": client[0] if client else None,
                            "request_id": request_id,
                        }
                    },
                )
