"""A throwaway test CA and a real https server on 127.0.0.1 that serves Client ID Metadata
Documents (the CIMD tests: tests/test_fetch_ssrf.py, and the SDK end-to-end tests through
tests/e2e/cimd_stack.py). Ostiary trusts it with OSTIARY_CIMD_CA_FILE = the CA and
OSTIARY_CIMD_ALLOWED_HOSTS = localhost."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "localhost"  # the name in the client_id URL and in OSTIARY_CIMD_ALLOWED_HOSTS


@dataclass(frozen=True)
class CertificateAuthority:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_test_ca(directory: Path) -> CertificateAuthority:
    """A CA and a server certificate for "localhost" (and 127.0.0.1), valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ostiary test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return CertificateAuthority(ca_file, cert_file, key_file)


class DocumentServer(ThreadingHTTPServer):
    """https on 127.0.0.1: serves `documents[path]` as application/json and records each GET."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext):
        self.tls = tls
        self.documents: dict[str, dict] = {}
        self.requests: list[str] = []  # the paths asked for, in order
        self.connections = 0
        super().__init__(("127.0.0.1", 0), _DocumentHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = HOST) -> str:
        return f"https://{host}:{self.port}{path}"

    def publish(self, path: str, *, client_name: str, redirect_uris: list[str], host: str = HOST, **extra) -> str:
        """Serve a public client's metadata document at `path`; its client_id (the URL)."""
        client_id = self.url(path, host)
        self.documents[path] = {
            "client_id": client_id,  # must equal the URL it is fetched from, exactly
            "client_name": client_name,
            "redirect_uris": redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **extra,
        }
        return client_id

    def get_request(self):
        sock, address = self.socket.accept()
        self.connections += 1
        sock.settimeout(5)
        return self.tls.wrap_socket(sock, server_side=True), address


class _DocumentHandler(BaseHTTPRequestHandler):
    server: DocumentServer

    def do_GET(self):
        self.server.requests.append(self.path)
        doc = self.server.documents.get(self.path)
        body = json.dumps(doc).encode() if doc is not None else b'{"error": "not found"}'
        self.send_response(200 if doc is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=600")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def document_server(ca: CertificateAuthority) -> Iterator[DocumentServer]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(ca.cert_file, ca.key_file)
    server = DocumentServer(tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
