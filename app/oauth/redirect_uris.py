"""Redirect URIs: what may be registered, and how a request's redirect_uri is matched.

OAuth 2.1 §2.3.1 / RFC 9700 §4.1.3: exact string comparison. One exception (OAuth 2.1 §8.4.2,
RFC 8252 §7.3): for http loopback redirects the port may differ, because native apps listen on
an ephemeral port.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Collection
from urllib.parse import urlsplit

from app.security.text import invisible_character
from app.settings import NATIVE_APP_SCHEMES

FORBIDDEN_SCHEMES = {"javascript", "data", "file", "vbscript", "about", "blob", "filesystem", "ws", "wss"}
MAX_LENGTH = 2000


class InvalidRedirectUri(ValueError):
    pass


def _host_is_loopback(netloc_host: str | None) -> bool:
    if not netloc_host:
        return False
    if netloc_host == "localhost":
        return True
    try:
        return ipaddress.ip_address(netloc_host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_redirect(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        return parts.scheme == "http" and _host_is_loopback(parts.hostname)
    except ValueError:
        return False


def validate_registered(uri: str, native_schemes: Collection[str] = NATIVE_APP_SCHEMES) -> str:
    """Raise InvalidRedirectUri unless `uri` may be registered (OAuth 2.1 §2.3, RFC 8252 §7).
    `native_schemes`: the short private-use schemes accepted besides reverse-domain ones."""
    if not isinstance(uri, str) or not uri:
        raise InvalidRedirectUri("a redirect URI must be a non-empty string")
    if len(uri) > MAX_LENGTH:
        raise InvalidRedirectUri("a redirect URI must be at most 2000 characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri):
        raise InvalidRedirectUri("a redirect URI must not contain spaces or control characters")
    hidden = invisible_character(uri)
    if hidden is not None or any(unicodedata.category(c) == "Zs" for c in uri):
        # Bidi overrides, zero-width and line separators would show the user another address.
        raise InvalidRedirectUri(f"a redirect URI must not contain invisible or separator characters ({hidden or 'a space'})")
    if "*" in uri:
        raise InvalidRedirectUri("wildcards are not allowed in redirect URIs")
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise InvalidRedirectUri(f"{uri!r} is not a valid URI") from None
    scheme = parts.scheme
    # RFC 6749 §3.1.2: "The endpoint URI MUST NOT include a fragment component."
    if "#" in uri:
        raise InvalidRedirectUri("a redirect URI must not contain a fragment")
    if not scheme:
        raise InvalidRedirectUri("a redirect URI must be absolute")
    if scheme.lower() in FORBIDDEN_SCHEMES:
        raise InvalidRedirectUri(f"the {scheme}: scheme is not allowed for redirect URIs")
    if uri.split(":", 1)[0] != scheme:  # urlsplit lowercases the scheme: look at it as written
        raise InvalidRedirectUri("the scheme of a redirect URI must be lowercase")
    if parts.username is not None or parts.password is not None:
        raise InvalidRedirectUri("a redirect URI must not contain user information")
    if scheme == "https":
        if not parts.hostname:
            raise InvalidRedirectUri("an https redirect URI must have a host")
        return uri
    if scheme == "http":
        # OAuth 2.1 §2.3.1: plain http only for loopback redirects of native apps (RFC 8252 §7.3).
        if not _host_is_loopback(parts.hostname):
            raise InvalidRedirectUri("http redirect URIs are allowed only on a loopback host (127.0.0.1, [::1], localhost)")
        return uri
    # RFC 8252 §7.1: a private-use scheme of a native app is a reverse-domain name; a few short
    # ones of shipping MCP clients are accepted by name (cursor://anysphere.cursor-mcp/...).
    # Anything else (mailto:, tel:, ms-settings:, chrome-extension:, jar: ...) hands the code to
    # some other program, not to an app that registered it.
    if "." in scheme or scheme in native_schemes:
        return uri
    raise InvalidRedirectUri(
        f"the {scheme}: scheme is not a private-use scheme: use https, http on loopback, or a reverse-domain "
        "scheme such as com.example.app: (RFC 8252 §7.1)"
    )


def matches(registered: list[str], requested: str) -> bool:
    """True if `requested` is one of the registered redirect URIs (OAuth 2.1 §4.1.1): the same
    string, or for an http loopback redirect the same string but for the port."""
    if requested in registered:
        return True
    key = _loopback_without_port(requested)
    return key is not None and any(_loopback_without_port(uri) == key for uri in registered)


# http://<loopback host>[:port]<path and query>, as written: no userinfo, no fragment, nothing
# between the host and the port or path (http://[::1].evil.example must not pass for [::1]).
_LOOPBACK = re.compile(r"^http://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?(?P<rest>[/?][^#]*)?$")


def _loopback_without_port(uri: str) -> str | None:
    """The URI with its port removed, if it is an http loopback redirect (OAuth 2.1 §8.4.2: only
    the port may differ); otherwise None. Everything else is compared as a string, byte for
    byte: no case folding, no normalisation, no control characters."""
    if not isinstance(uri, str) or len(uri) > MAX_LENGTH or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri):
        return None
    match = _LOOPBACK.match(uri)
    if match is None or not _host_is_loopback(match["host"]):
        return None
    if match["port"] is not None and not 0 < int(match["port"]) <= 65535:
        return None
    return f"http://{match['host']}{match['rest'] or ''}"
