"""Outbound fetching of Client ID Metadata Documents through the REAL guarded transport
(app/fetch.py), no MockTransport: SSRF rules (CIMD draft §6 "Security Considerations",
RFC 9700 §4.4 and the issue's "private, loopback, link-local or multicast" rule), DNS rebinding,
and a whole authorization flow against a real local https server with a test CA.

Local listeners bind 127.0.0.1 (and 127.0.0.2 for the rebinding test) and are closed at test end.
A listener that must never be reached is checked with select(): a connection the kernel accepted
into the backlog makes the listening socket readable."""

from __future__ import annotations

import ipaddress
import select
import socket
from collections.abc import Iterator

import pytest

from app.infra.fetch import Fetcher, FetchError, guarded_transport, is_public_address
from tests.support import (
    REDIRECT,
    audit_events,
    authorize,
    authorize_params,
    exchange,
    pkce,
    query,
    signed_in,
    verify_jwt,
)
from tests.tls_documents import (
    CertificateAuthority,
    DocumentServer,
    document_server,
    make_test_ca,
)

pytestmark = pytest.mark.anyio


# -- the address rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        pytest.param("10.0.0.1", False, id="10/8 (RFC 1918)"),
        pytest.param("10.255.255.255", False, id="10/8 top"),
        pytest.param("172.16.0.1", False, id="172.16/12 (RFC 1918)"),
        pytest.param("172.31.255.254", False, id="172.16/12 top"),
        pytest.param("192.168.1.1", False, id="192.168/16 (RFC 1918)"),
        pytest.param("127.0.0.1", False, id="127/8 loopback"),
        pytest.param("127.1.2.3", False, id="127/8 not only .1"),
        pytest.param("::1", False, id="::1 loopback"),
        pytest.param("fe80::1", False, id="fe80::/10 link-local"),
        pytest.param("fe80::1%eth0", False, id="link-local with zone id"),
        pytest.param("fec0::1", False, id="fec0::/10 site-local (RFC 3879, still routed inside networks)"),
        pytest.param("169.254.169.254", False, id="169.254/16 link-local (cloud metadata)"),
        pytest.param("224.0.0.1", False, id="224/4 multicast"),
        pytest.param("239.255.255.250", False, id="224/4 multicast top"),
        pytest.param("ff02::1", False, id="ff00::/8 multicast"),
        pytest.param("::ffff:127.0.0.1", False, id="IPv4-mapped loopback"),
        pytest.param("::ffff:10.0.0.1", False, id="IPv4-mapped private"),
        pytest.param("100.64.0.1", False, id="100.64/10 CGNAT (RFC 6598)"),
        pytest.param("100.127.255.254", False, id="100.64/10 CGNAT top"),
        pytest.param("0.0.0.0", False, id="0.0.0.0 unspecified"),
        pytest.param("::", False, id=":: unspecified"),
        pytest.param("fd12:3456::1", False, id="fc00::/7 unique local"),
        pytest.param("192.0.2.1", False, id="192.0.2/24 documentation"),
        pytest.param("255.255.255.255", False, id="broadcast"),
        pytest.param("8.8.8.8", True, id="8.8.8.8 public"),
        pytest.param("1.1.1.1", True, id="1.1.1.1 public"),
        pytest.param("2606:4700::", True, id="2606:4700:: public"),
        pytest.param("2001:4860:4860::8888", True, id="2001:4860:: public"),
        pytest.param("2002:7f00:1::1", False, id="6to4 wrapping 127.0.0.1"),
        pytest.param("2002:a9fe:a9fe::1", False, id="6to4 wrapping the cloud metadata address"),
        pytest.param("2002:0808:0808::1", True, id="6to4 wrapping a public address"),
        pytest.param("2001:0:4136:e378:8000:63bf:80ff:fffe", False, id="Teredo wrapping 127.0.0.1"),
    ],
)
def test_is_public_address(address, public):
    """Only globally routable unicast addresses may be fetched."""
    assert is_public_address(address) is public


# -- listeners that must never be reached ---------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 that nothing may connect to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()


def was_connected(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0.05)
    return bool(readable)


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def refuse_page(response, runtime, reason: str) -> None:
    """An error page that says only that the document could not be fetched: which address was
    refused, or whether a name resolved or a port answered, is for the log and the audit row
    (`reason`), not for an anonymous caller probing the network."""
    assert response.status_code == 400, (response.status_code, response.text[:400])
    assert response.headers["content-type"].startswith("text/html")
    assert "location" not in response.headers
    assert "could not be fetched" in response.text
    for detail in ("127.0.0.1", "::1", "resolve", "Error", "may not be fetched"):
        assert detail not in response.text.split("<main", 1)[1], response.text
    assert reason in audit_events(runtime, "client.metadata_refused")[-1].details["reason"]


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://localhost:{port}/client.json", id="localhost"),
        pytest.param("https://127.0.0.1:{port}/x", id="127.0.0.1"),
        pytest.param("https://LOCALHOST:{port}/client.json", id="LOCALHOST (case)"),
    ],
)
async def test_loopback_client_id_is_refused_without_connecting(client, runtime, listener, url):
    """SSRF (CIMD §6, RFC 9700 §4.4): a client_id URL resolving to a loopback address is refused
    at /authorize with an error page; the listener behind it was never connected to."""
    client_id = url.format(port=port_of(listener))
    await signed_in(client, runtime)
    _, challenge = pkce()
    response = await client.get("/authorize", params=authorize_params(client_id, challenge))
    refuse_page(response, runtime, "may not be fetched")
    assert not was_connected(listener)
    assert audit_events(runtime, "client.metadata_refused")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://localhost:{port}/client.json", id="localhost"),
        pytest.param("https://127.0.0.1:{port}/client.json", id="127.0.0.1"),
        pytest.param("https://[::ffff:127.0.0.1]:{port}/client.json", id="IPv4-mapped loopback literal"),
        pytest.param("https://0.0.0.0:{port}/client.json", id="0.0.0.0"),
        pytest.param("https://169.254.169.254/latest/meta-data", id="cloud metadata"),
        pytest.param("https://10.1.2.3/client.json", id="10/8"),
        pytest.param("https://192.168.0.1/client.json", id="192.168/16"),
        pytest.param("https://[fe80::1]/client.json", id="IPv6 link-local"),
        pytest.param("https://[::1]:{port}/client.json", id="IPv6 loopback"),
    ],
)
def test_guarded_transport_refuses_private_targets(listener, url):
    """The guarded transport itself refuses before connecting (no timeout spent, no packet sent)."""
    fetcher = Fetcher(guarded_transport(allowed_hosts=[]), timeout=2.0)
    try:
        with pytest.raises(FetchError, match="may not be fetched"):
            fetcher.get_json_document(url.format(port=port_of(listener)))
    finally:
        fetcher.close()
    assert not was_connected(listener)


@pytest.fixture
def fake_dns(monkeypatch):
    """DNS answers for made-up names (the network edge); real resolution for everything else.
    `answers[name]` is a list of address lists, one per successive lookup (the last repeats)."""
    real = socket.getaddrinfo
    answers: dict[str, list[list[str]]] = {}
    lookups: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, family, type, proto, flags)
        lookups.append(name)
        queue = answers[name]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        result = []
        for address in addresses:
            if ipaddress.ip_address(address).version == 6:
                result.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                result.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return result

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


def test_every_resolved_address_is_checked(listener, fake_dns):
    """A host with one public and one loopback address is refused: every address is checked,
    not only the first (docs/decisions.md#metadata-fetches-refuse-private-addresses)."""
    answers, _ = fake_dns
    answers["mixed.example"] = [["8.8.8.8", "127.0.0.1"]]
    fetcher = Fetcher(guarded_transport(allowed_hosts=[]), timeout=2.0)
    try:
        with pytest.raises(FetchError, match=r"may not be fetched \(127\.0\.0\.1\)"):
            fetcher.get_json_document(f"https://mixed.example:{port_of(listener)}/client.json")
    finally:
        fetcher.close()
    assert not was_connected(listener)


def test_connects_to_the_address_it_checked(listener, fake_dns):
    """DNS rebinding: the host is resolved once and the connection goes to the address that was
    checked; a second DNS answer (here 127.0.0.2) is never asked for nor used."""
    port = port_of(listener)
    rebound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        rebound.bind(("127.0.0.2", port))
    except OSError:
        rebound.close()
        pytest.skip("127.0.0.2 is not usable here")
    rebound.listen(8)
    answers, lookups = fake_dns
    answers["rebind.test"] = [["127.0.0.1"], ["127.0.0.2"]]
    fetcher = Fetcher(guarded_transport(allowed_hosts=["rebind.test"]), timeout=0.5)
    try:
        with pytest.raises(FetchError):  # the first listener never answers the TLS handshake
            fetcher.get_json_document(f"https://rebind.test:{port}/client.json")
    finally:
        fetcher.close()
        try:
            assert lookups == ["rebind.test"]
            assert was_connected(listener)
            assert not was_connected(rebound)
        finally:
            rebound.close()


def test_falls_back_to_the_next_checked_address(fake_dns):
    """A host whose first address does not answer (e.g. ::1 first for `localhost` where only
    IPv4 listens) is reached on its next checked address."""
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.2", 0))
    port = port_of(dead)
    dead.close()  # nothing listens on 127.0.0.2:port now
    live = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        live.bind(("127.0.0.1", port))
    except OSError:
        live.close()
        pytest.skip("port taken on 127.0.0.1")
    live.listen(8)
    answers, _ = fake_dns
    answers["dual.test"] = [["127.0.0.2", "127.0.0.1"]]
    fetcher = Fetcher(guarded_transport(allowed_hosts=["dual.test"]), timeout=0.5)
    try:
        with pytest.raises(FetchError):  # no TLS on the other side; what matters is where it went
            fetcher.get_json_document(f"https://dual.test:{port}/client.json")
        assert was_connected(live)
    finally:
        fetcher.close()
        live.close()


# -- a real https server with a test CA -----------------------------------------------------------


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory) -> CertificateAuthority:
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture
def tls_server(test_ca) -> Iterator[DocumentServer]:
    with document_server(test_ca) as server:
        yield server


@pytest.fixture
def settings_overrides(request, test_ca) -> dict:
    """Indirectly parametrized: which trust the app's fetcher is configured with."""
    trust = getattr(request, "param", "none")
    return {
        "none": {},
        "allowed host and CA": {"cimd_allowed_hosts": ["localhost"], "cimd_ca_file": str(test_ca.ca_file)},
        "allowed host, no CA": {"cimd_allowed_hosts": ["localhost"]},
    }[trust]


def publish(server: DocumentServer, host: str = "localhost") -> str:
    return server.publish("/client.json", client_name="Local TLS Client", redirect_uris=[REDIRECT], host=host)


@pytest.mark.parametrize("settings_overrides", ["allowed host and CA"], indirect=True)
async def test_full_flow_with_a_document_served_over_tls(client, runtime, tls_server):
    """CIMD end to end over a real TLS connection: with OSTIARY_CIMD_ALLOWED_HOSTS=localhost and
    OSTIARY_CIMD_CA_FILE=<test CA>, the document is fetched from https://localhost:<port>, the
    certificate is verified against the test CA, and the flow completes to a token."""
    client_id = publish(tls_server)
    await signed_in(client, runtime)
    verifier, challenge = pkce()
    response = await authorize(client, authorize_params(client_id, challenge))
    assert response.status_code == 302, response.text
    code = query(response.headers["location"])["code"]
    token = await exchange(client, client_id, code, verifier)
    assert token.status_code == 200, token.text
    claims = (await verify_jwt(client, token.json()["access_token"])).claims
    assert claims["client_id"] == client_id
    assert tls_server.requests == ["/client.json"]  # cached for the consent step and /token


@pytest.mark.parametrize("settings_overrides", ["none"], indirect=True)
async def test_same_url_is_refused_without_the_allowed_hosts_setting(client, runtime, tls_server):
    """Without OSTIARY_CIMD_ALLOWED_HOSTS the same loopback URL is refused, and the server never
    saw a connection."""
    client_id = publish(tls_server)
    await signed_in(client, runtime)
    _, challenge = pkce()
    response = await client.get("/authorize", params=authorize_params(client_id, challenge))
    refuse_page(response, runtime, "may not be fetched")
    assert tls_server.connections == 0


@pytest.mark.parametrize("settings_overrides", ["allowed host and CA"], indirect=True)
async def test_allowed_hosts_are_matched_by_name_not_address(client, runtime, tls_server):
    """Allowing `localhost` does not allow `127.0.0.1`: the list names hosts as written."""
    client_id = publish(tls_server, host="127.0.0.1")
    await signed_in(client, runtime)
    _, challenge = pkce()
    refuse_page(await client.get("/authorize", params=authorize_params(client_id, challenge)), runtime, "may not be fetched")
    assert tls_server.connections == 0


@pytest.mark.parametrize("settings_overrides", ["allowed host, no CA"], indirect=True)
async def test_certificate_from_an_untrusted_ca_is_refused(client, runtime, tls_server):
    """TLS is verified: without the test CA configured, the same server's certificate is not
    trusted and the document is not used (no request reached the server)."""
    client_id = publish(tls_server)
    await signed_in(client, runtime)
    _, challenge = pkce()
    refuse_page(await client.get("/authorize", params=authorize_params(client_id, challenge)), runtime, "could not be fetched")
    assert tls_server.requests == []
