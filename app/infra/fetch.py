"""Outbound HTTP: the one place Ostiary fetches from the network (Client ID Metadata Documents,
JWK Sets and identity providers' metadata).

Rules (CIMD draft -02 §5 and §8.6, RFC 9700 §4.4 on SSRF):
- https only; no redirects followed; connect and read timeouts; a size cap on the body.
- The host is resolved once; if ANY address it resolves to is private, loopback, link-local,
  multicast or otherwise not globally routable, the fetch is refused (unless the host is listed
  in OSTIARY_CIMD_ALLOWED_HOSTS). The connection then goes to the address that was checked, so a
  second DNS answer (rebinding) cannot redirect it. TLS still verifies the certificate against
  the host name.

The transport is injectable: unit tests pass an `httpx.MockTransport`.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from httpcore._backends.sync import SyncStream

MAX_BODY = 5 * 1024


class FetchError(Exception):
    """Why a document could not be fetched, in words fit for an error page."""


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 (mapped, 6to4, Teredo) is judged as that IPv4 address:
        # 2002:7f00:1:: is 127.0.0.1 and 2002:a9fe:a9fe:: the cloud metadata service.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.is_site_local:
            # fec0::/10, site-local (RFC 3879 deprecated it, but networks still route it
            # internally); Python's is_global says True.
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved)


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves, checks every address, and connects to the checked one."""

    def __init__(self, allowed_hosts: set[str]):
        super().__init__()
        self._allowed_hosts = allowed_hosts

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        infos = _resolve(host, port)
        addresses = [info[4][0] for info in infos]
        if host.lower() not in self._allowed_hosts:
            bad = [a for a in addresses if not is_public_address(a)]
            if bad or not addresses:
                raise FetchError(f"{host} resolves to an address that may not be fetched ({', '.join(bad) or 'none'})")
        # Try the checked addresses in order, as a resolver-following client would: "localhost"
        # or a dual-stack host may answer ::1 / an AAAA first where only IPv4 is listening.
        error: OSError | None = None
        for family, _, _, _, sockaddr in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            for option in socket_options or []:
                sock.setsockopt(*option)
            return SyncStream(sock)
        raise httpcore.ConnectError(str(error)) from error


def _resolve(host: str, port: int) -> Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror}") from None


def guarded_transport(*, allowed_hosts: list[str], ca_file: str | None = None) -> httpx.HTTPTransport:
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    transport = httpx.HTTPTransport(verify=ctx, retries=0)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ctx, network_backend=_GuardedBackend({h.lower() for h in allowed_hosts}), retries=0
    )
    return transport


@dataclass(frozen=True)
class Fetched:
    url: str
    status: int
    content_type: str
    headers: httpx.Headers
    body: bytes


class Busy(FetchError):
    """Too many documents are being fetched right now (from this host, or at all)."""


class _Slots:
    """Counting caps taken without waiting: a fetch that finds no free slot is refused at once,
    so slow hosts can hold at most `total` worker threads, and one host at most `per_host`, and
    every other request keeps the rest of the thread pool."""

    def __init__(self, total: int, per_host: int):
        self._total, self._per_host = total, per_host
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def take(self, host: str) -> Iterator[None]:
        with self._lock:
            if sum(self._busy.values()) >= self._total:
                raise Busy("too many metadata documents are being fetched")
            if self._busy.get(host, 0) >= self._per_host:
                raise Busy(f"too many documents are being fetched from {host}")
            self._busy[host] = self._busy.get(host, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[host] -= 1
                if not self._busy[host]:
                    del self._busy[host]


class Fetcher:
    def __init__(self, transport: httpx.BaseTransport, timeout: float, *, max_total: int = 8, max_per_host: int = 2):
        self._timeout = timeout
        self._slots = _Slots(max_total, max_per_host)
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            # identity: the 5 KB cap counts the bytes on the wire, never a decompression bomb.
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "identity",
                "User-Agent": "Ostiary (client metadata fetcher)",
            },
            trust_env=False,
        )

    def get_json_document(self, url: str, max_body: int = MAX_BODY) -> Fetched:
        """GET a small JSON document. Raises FetchError for anything but a 200 JSON answer
        within the size cap, and Busy when the concurrency caps are reached."""
        with self._slots.take((urlsplit(url).hostname or "").lower()):
            return self._get(url, max_body)

    def post_form(self, url: str, data: dict[str, str], auth: tuple[str, str], max_body: int = 64 * 1024) -> Fetched:
        """POST a form with HTTP Basic client credentials (an upstream provider's token endpoint)
        and read a JSON answer of any status, within the caps; raises FetchError otherwise."""
        with self._slots.take((urlsplit(url).hostname or "").lower()):
            try:
                response = self._client.post(url, data=data, auth=auth)
            except httpx.HTTPError as exc:
                raise FetchError(f"the request could not be made ({exc.__class__.__name__})") from None
            if len(response.content) > max_body:
                raise FetchError(f"the answer is larger than {max_body} bytes")
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            return Fetched(url, response.status_code, content_type, response.headers, response.content)

    def _get(self, url: str, max_body: int) -> Fetched:
        # httpx's timeouts bound each read, not the whole body: a server dripping a byte at a
        # time would hold a worker for hours. The whole exchange gets twice the timeout.
        deadline = time.monotonic() + 2 * self._timeout
        try:
            with self._client.stream("GET", url) as response:
                if response.is_redirect:
                    raise FetchError(f"the document answered {response.status_code} (redirects are not followed)")
                if response.status_code != 200:
                    raise FetchError(f"the document answered {response.status_code}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type != "application/json" and not (
                    content_type.startswith("application/") and content_type.endswith("+json")
                ):
                    raise FetchError(f"the document is not JSON ({content_type or 'no content type'})")
                if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
                    raise FetchError("the document is compressed although identity was asked for")
                length = response.headers.get("content-length")
                if length and length.isdigit() and int(length) > max_body:
                    raise FetchError(f"the document is larger than {max_body} bytes")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_body:
                        raise FetchError(f"the document is larger than {max_body} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError("the document did not answer in time")
                return Fetched(url, response.status_code, content_type, response.headers, body)
        except FetchError:
            raise
        except httpx.TimeoutException:
            raise FetchError("the document did not answer in time") from None
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            while cause is not None and not isinstance(cause, FetchError):
                cause = cause.__cause__ or cause.__context__
            if isinstance(cause, FetchError):
                raise FetchError(str(cause)) from None
            raise FetchError(f"the document could not be fetched ({exc.__class__.__name__})") from None

    def close(self) -> None:
        self._client.close()
