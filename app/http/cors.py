"""CORS for the public protocol endpoints only, without credentials.

Browser-based MCP clients read the metadata and JWKS and call /token, /register and /revoke
from another origin. HTML pages and the admin console never get CORS headers.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.endpoints import endpoint_for

ALLOW_HEADERS = b"Authorization, Content-Type, MCP-Protocol-Version, DPoP"  # RFC 9449 §4.1
EXPOSE_HEADERS = b"WWW-Authenticate, Retry-After, DPoP-Nonce"  # RFC 9449 §8


class PublicCORSMiddleware:
    def __init__(self, app: ASGIApp, prefix: str):
        self.app = app
        self.prefix = prefix  # the issuer's path; the well-known documents are also at the root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not endpoint_for(scope["path"].removeprefix(self.prefix)).cors:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is None:
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", b"*"),
                        (b"access-control-allow-methods", b"GET, POST, PUT, DELETE, OPTIONS"),
                        (b"access-control-allow-headers", ALLOW_HEADERS),
                        (b"access-control-max-age", b"86400"),
                        (b"vary", b"Origin"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [
                        *list(message.get("headers", [])),
                        (b"access-control-allow-origin", b"*"),
                        (b"access-control-expose-headers", EXPOSE_HEADERS),
                    ],
                }
            await send(message)

        await self.app(scope, receive, send_cors)
