"""Who sent a request and to which host: trusted proxies and the Host allow-list.

Pure functions; app/web/edge.py applies them to every request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import urlsplit

from starlette.requests import Request

from app.settings import Settings, is_loopback_host

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_PORTS = {"http": "80", "https": "443"}


def split_host(value: str) -> tuple[str, str | None]:
    """("Example.COM:8443") -> ("example.com", "8443"); IPv6 literals keep their brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        host, rest = value[: end + 1], value[end + 1 :]
        return host, rest[1:] if rest.startswith(":") else None
    host, sep, port = value.rpartition(":")
    return (host, port) if sep and port.isdigit() else (value, None)


class HostPolicy:
    """Host header allow-list (DNS rebinding defence): the issuer's host and port, the
    configured extra hosts (any port unless one is given) and, for a loopback issuer, every
    loopback name on the issuer's port (a rebinding attacker cannot make a browser send those)."""

    def __init__(self, settings: Settings):
        parts = urlsplit(settings.issuer)
        self.scheme = parts.scheme
        host, port = split_host(parts.netloc)
        self.port = port or DEFAULT_PORTS[self.scheme]
        names = {host}
        if settings.issuer_is_loopback:
            names.update(LOOPBACK_NAMES)
        self._exact = {(name, self.port) for name in names}
        self._any_port: set[str] = set()
        for extra in settings.extra_hosts:
            extra_host, extra_port = split_host(extra)
            if extra_port:
                self._exact.add((extra_host, extra_port))
            else:
                self._any_port.add(extra_host)

    def allows(self, host_header: str | None) -> bool:
        if not host_header or len(host_header) > 300:
            return False
        host, port = split_host(host_header)
        if host in self._any_port:
            return True
        # RFC 9110 §7.2: a Host without a port means the scheme's default port.
        return (host, port or DEFAULT_PORTS[self.scheme]) in self._exact


class ProxyPolicy:
    """X-Forwarded-For / -Proto / -Host are believed only from the configured proxy addresses
    (settings refuse `*`: docs/decisions.md#forwarded-headers-are-believed-only-from-trusted-proxies)."""

    def __init__(self, trusted: list[str]):
        self._networks = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)

    @property
    def enabled(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str | None) -> bool:
        return _in_networks(address, self._networks) if address and self._networks else False

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The first address, from the right, that is not one of our proxies (the rightmost
        entries were appended by proxies we trust; anything further left is client-supplied).
        If every entry is a trusted proxy, the leftmost one is the client."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [h.strip().strip("[]") for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not _is_ip(hop):
                return peer  # garbage in the header: do not believe any of it
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer


def client_ip(request: Request) -> str:
    """The caller's address, as EdgeMiddleware resolved it from trusted proxy headers."""
    return request.client.host if request.client else "unknown"


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4096)
def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _in_networks(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    ip = _parse(address)
    return ip is not None and any(ip in net for net in networks)


def network_check(networks: list[str]) -> Callable[[str], bool]:
    """A test `address -> bool` for membership of `networks` (CIDR strings, "*" for any)."""
    if "*" in networks:
        return lambda address: True
    parsed = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
    return lambda address: bool(address) and _in_networks(address, parsed)


__all__ = ["HostPolicy", "ProxyPolicy", "is_loopback_host", "network_check", "split_host"]
