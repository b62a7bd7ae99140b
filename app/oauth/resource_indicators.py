"""RFC 8707 resource indicators: the canonical form of a resource URI.

MCP clients send the MCP server's canonical URI as `resource`; the same server may be written
`HTTPS://Example.com:443/mcp/` by one client and `https://example.com/mcp` by another. Both name
one resource. Scheme and host compare case-insensitively, the default port is dropped, a
trailing slash is dropped, and the path and query are otherwise kept exactly.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from app.settings import is_loopback_host

MAX_LENGTH = 2048
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class InvalidResource(ValueError):
    pass


def canonical_resource(value: str) -> str:
    """The canonical form of a resource URI, or InvalidResource saying why it is not one."""
    if not value or len(value) > MAX_LENGTH:
        raise InvalidResource("a resource must be an absolute URI of at most 2048 characters")
    if _SPACE_OR_CONTROL.search(value):
        raise InvalidResource("a resource must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidResource("a resource must be an absolute URI") from None
    scheme = parts.scheme.lower()
    # RFC 8707 §2: "MUST be an absolute URI ... MUST NOT include a fragment component".
    if scheme not in ("https", "http") or not parts.hostname:
        raise InvalidResource("a resource must be an absolute https URI")
    if parts.fragment or "#" in value:
        raise InvalidResource("a resource must not contain a fragment")
    if parts.username is not None or parts.password is not None:
        raise InvalidResource("a resource must not contain user information")
    if scheme == "http" and not is_loopback_host(parts.hostname):
        raise InvalidResource("a resource must use https (http only on a loopback host)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, {"https": 443, "http": 80}[scheme]) else f"{host}:{port}"
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{path}{query}"
