"""Bearer secrets and the keyring.

Every opaque bearer value we issue (codes, refresh tokens, session ids, registration access
tokens, client secrets) is 256 random bits and is stored only as HMAC-SHA256 under the keyring.
The keyring's first secret makes new hashes and encrypts; every secret still verifies and
decrypts, so an operator can rotate OSTIARY_SECRET_KEYS by putting a new secret first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets as _secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_BYTES = 32  # 256 bits


def new_token(prefix: str = "") -> str:
    """A fresh opaque bearer value. The prefix lets secret scanners recognise a leak."""
    return prefix + _secrets.token_urlsafe(TOKEN_BYTES)


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=b"ostiary", info=purpose).derive(secret)


class DecryptError(Exception):
    pass


class Keyring:
    def __init__(self, secrets: list[bytes]):
        if not secrets:
            raise ValueError("the keyring needs at least one secret")
        self._mac_keys = [_derive(s, b"hmac-v1") for s in secrets]
        self._enc_keys = [(_fingerprint(s), AESGCM(_derive(s, b"aes-gcm-v1"))) for s in secrets]

    # -- hashing of bearer secrets ----------------------------------------------------------

    def hash(self, value: str) -> str:
        """The stored form of a bearer value (under the first secret)."""
        return hmac.new(self._mac_keys[0], value.encode(), hashlib.sha256).hexdigest()

    def hashes(self, value: str) -> list[str]:
        """Every stored form the value may have, for look-ups that survive key rotation."""
        return [hmac.new(k, value.encode(), hashlib.sha256).hexdigest() for k in self._mac_keys]

    def verify(self, value: str, stored: str | None) -> bool:
        if not stored:
            return False
        return any(hmac.compare_digest(h, stored) for h in self.hashes(value))

    # -- encryption at rest -----------------------------------------------------------------

    def encrypt(self, plaintext: bytes, context: bytes = b"") -> str:
        fingerprint, aead = self._enc_keys[0]
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, plaintext, context)
        return f"v1.{fingerprint}.{_b64(nonce + sealed)}"

    def decrypt(self, token: str, context: bytes = b"") -> bytes:
        try:
            version, fingerprint, body = token.split(".", 2)
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise DecryptError("malformed ciphertext") from None
        if version != "v1":
            raise DecryptError("unknown ciphertext version")
        for fp, aead in self._enc_keys:
            if fp != fingerprint:
                continue
            try:
                return aead.decrypt(raw[:12], raw[12:], context)
            except InvalidTag:  # the wrong key, or tampered with
                break
        raise DecryptError("no secret in OSTIARY_SECRET_KEYS decrypts this value")

    def is_current(self, token: str) -> bool:
        """True when the value is encrypted under the first secret."""
        return token.split(".", 2)[1:2] == [self._enc_keys[0][0]]


def _fingerprint(secret: bytes) -> str:
    return hashlib.sha256(b"ostiary-fingerprint" + secret).hexdigest()[:8]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
