"""The first policy every request meets, before any route runs: who sent it (trusted proxies),
to which host (DNS rebinding), over what transport (TLS), and how big it is.

Refusals are RFC 6749 error bodies for API callers and a short page for browsers; none of them
reaches the application, so hostile input never gets as far as a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.endpoints import endpoint_for
from app.security.hosts import HostPolicy, ProxyPolicy
from app.services.audit import RequestContext, request_context
from app.settings import Settings

log = logging.getLogger("ostiary.edge")

MAX_HEADER_BYTES = 16 * 1024  # all header names and values together
MAX_HEADERS = 100
MAX_TARGET_BYTES = 8 * 1024  # path + query string


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body exceeds {limit} bytes.")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, render_page: Callable[[int, str, str], bytes]):
        self.app = app
        self.hosts = HostPolicy(settings)
        # For the 421 log line: the host names an operator configured.
        self.answers_for = ", ".join([urlsplit(settings.issuer).netloc, *settings.extra_hosts])
        self.proxies = ProxyPolicy(settings.trusted_proxies)
        self.require_tls = not settings.issuer_is_loopback
        self.prefix = settings.issuer_path
        self.max_body = settings.max_body
        self.max_body_protocol = settings.max_body_protocol
        self.render_page = render_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(self.prefix) if self.prefix else scope["path"]
        headers = scope["headers"]

        if len(headers) > MAX_HEADERS or sum(len(n) + len(v) for n, v in headers) > MAX_HEADER_BYTES:
            return await self._refuse(
                scope, send, 431, "request_header_fields_too_large", "The request headers are too large.", receive
            )
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > MAX_TARGET_BYTES:
            return await self._refuse(scope, send, 414, "invalid_request", "The request URI is too long.", receive)

        if "\x00" in scope["path"] or b"%00" in (scope.get("query_string") or b""):
            return await self._refuse(scope, send, 400, "invalid_request", "The request URI contains a NUL character.", receive)

        self._apply_proxy_headers(scope)
        headers = scope["headers"]  # the Host a trusted proxy forwarded (X-Forwarded-Host) counts
        endpoint = endpoint_for(path)
        if not endpoint.probe:
            host = _header(headers, b"host")
            if not self.hosts.allows(host):
                # RFC 9110 §15.5.20: this server is not configured to answer for that host. The
                # operator learns which setting to change (docs/decisions.md#unknown-host-names-get-421).
                log.warning(
                    "421 Misdirected Request for host %s: this server answers for %s; if that host is "
                    "this server's, set OSTIARY_ISSUER to its URL or add it to OSTIARY_EXTRA_HOSTS",
                    _printable(host),
                    self.answers_for,
                )
                return await self._refuse(
                    scope, send, 421, "invalid_request", "This server does not answer for that host name.", receive
                )
            if self.require_tls and scope.get("scheme") != "https":
                # OAuth 2.1 §1.5: every endpoint requires TLS (unless the issuer is loopback).
                return await self._refuse(scope, send, 400, "invalid_request", "HTTPS is required.", receive)

        limit = self.max_body_protocol if endpoint.protocol_body else self.max_body
        length = _header(headers, b"content-length")
        if length is not None:
            if not length.isdigit():
                return await self._refuse(scope, send, 400, "invalid_request", "Invalid Content-Length.", receive)
            if int(length) > limit:
                return await self._refuse(
                    scope, send, 413, "invalid_request", f"The request body exceeds {limit} bytes.", receive
                )

        started = False
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # chunked bodies have no Content-Length to check up front
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        token = request_context.set(RequestContext(ip=(scope.get("client") or (None,))[0], request_id=_request_id(scope)))
        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await self._refuse(scope, send, 413, "invalid_request", exc.detail, receive)
        finally:
            request_context.reset(token)

    def _apply_proxy_headers(self, scope: Scope) -> None:
        if not self.proxies.enabled:
            return
        client = scope.get("client")
        peer = client[0] if client else None
        if not self.proxies.trusts(peer):
            return
        headers = scope["headers"]
        forwarded_for = _header(headers, b"x-forwarded-for")
        if forwarded_for:
            address = self.proxies.client(peer, forwarded_for)
            scope["client"] = (address, 0)
        proto = _header(headers, b"x-forwarded-proto")
        if proto:
            proto = proto.split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto
        forwarded_host = _header(headers, b"x-forwarded-host")
        if forwarded_host:
            value = forwarded_host.split(",")[0].strip().encode("latin-1", "replace")
            scope["headers"] = [(n, v) for n, v in headers if n != b"host"] + [(b"host", value)]

    async def _refuse(
        self, scope: Scope, send: Send, status: int, error: str, description: str, receive: Receive | None = None
    ) -> None:
        """Answer before the app runs. What the client is still sending is read first (bounded),
        so that the connection closes cleanly and the client reads this answer."""
        if receive is not None:
            await _drain(scope, receive)
        accept = _header(scope["headers"], b"accept") or ""
        if "text/html" in accept:
            body = self.render_page(status, "This request cannot be served", description)
            content_type = b"text/html; charset=utf-8"
        else:
            body = json.dumps({"error": error, "error_description": description}).encode()
            content_type = b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# Lingering close (RFC 9112 §9.6): closing with unread request data makes the kernel send a
# reset, which can destroy the 413 before the client reads it. Read and discard up to this much
# of an oversized body, for at most this long, before answering; past that the client is abusive.
DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 5.0


async def _drain(scope: Scope, receive: Receive) -> None:
    """Read what is left of the request body, within the bounds above. Not when the client waits
    for `100 Continue` (RFC 9110 §10.1.1): it has sent nothing and will send nothing."""
    expect = _header(scope["headers"], b"expect") or ""
    if expect.lower() == "100-continue":
        return
    drained = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while drained <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _printable(value: str | None, limit: int = 100) -> str:
    """A client-sent value for a log line: quoted, escaped and cut short (no forged lines)."""
    if value is None:
        return "(none)"
    return repr(value[:limit] + ("..." if len(value) > limit else ""))


def _request_id(scope: Scope) -> str | None:
    request_id: str | None = (scope.get("state") or {}).get("request_id")
    return request_id
