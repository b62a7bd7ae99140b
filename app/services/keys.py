"""Signing keys: lifecycle, encryption at rest, the JWKS document, and signing.

States: ``next`` -> ``active`` -> ``retired`` -> deleted.

- ``next`` is published in the JWKS before it ever signs, so resource servers that cache the
  JWKS already know it when it becomes active (one rotation period ahead on schedule).
- exactly one ``active`` key signs; every JWT carries its ``kid``.
- ``retired`` stays published until every token it signed has expired: the longest token
  lifetime, plus the JWKS cache lifetime, plus the interval at which replicas reload keys.

Rotation runs in one transaction under the ``signing-keys`` job lock, so two replicas never
rotate twice. Private keys are stored AES-GCM encrypted under the keyring (app/security/secrets).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.infra.db import now, transaction
from app.models.key import ACTIVE, NEXT, RETIRED, SigningKey
from app.security.secrets import DecryptError, Keyring
from app.services import audit
from app.settings import Settings, SettingsError
from app.stores import jobs
from app.stores import keys as store

log = logging.getLogger("ostiary.keys")

LOCK = "signing-keys"
RSA_BITS = 2048


def reload_interval(settings: Settings) -> int:
    """How often a replica re-reads the keys: never slower than the JWKS cache lifetime."""
    return max(1, min(30, settings.jwks_max_age))


def retired_key_lifetime(settings: Settings) -> int:
    return settings.max_token_lifetime + settings.jwks_max_age + reload_interval(settings)


class RotationRefused(Exception):
    pass


# -- creation and encryption ----------------------------------------------------------------


def _context(kid: str) -> bytes:
    # Binds each ciphertext to its key id: a ciphertext copied onto another row fails to decrypt.
    return b"signing-key:" + kid.encode()


def new_key(alg: str, state: str, keyring: Keyring) -> SigningKey:
    key: RSAKey | ECKey
    if alg == "RS256":
        key = RSAKey.generate_key(RSA_BITS, auto_kid=True)
    elif alg == "ES256":
        key = ECKey.generate_key("P-256", auto_kid=True)
    else:  # pragma: no cover - Settings allows only these two
        raise ValueError(f"unsupported signing algorithm {alg}")
    kid = key.kid  # RFC 7638 thumbprint
    assert kid is not None  # auto_kid=True always sets it
    public = {**key.as_dict(private=False), "kid": kid, "alg": alg, "use": "sig"}
    pem = key.as_pem(private=True)
    t = now()
    return SigningKey(
        kid=kid,
        alg=alg,
        state=state,
        public_jwk=public,
        private_key_enc=keyring.encrypt(pem, _context(kid)),
        created_at=t,
        activated_at=t if state == ACTIVE else None,
    )


def private_key(row: SigningKey, keyring: Keyring) -> RSAKey | ECKey:
    pem = keyring.decrypt(row.private_key_enc, _context(row.kid))
    cls = RSAKey if row.alg == "RS256" else ECKey
    return cls.import_key(pem, parameters={"kid": row.kid, "alg": row.alg, "use": "sig"})


def check_keyring(factory: sessionmaker[Session], keyring: Keyring) -> None:
    """At startup: every published signing key decrypts under the keyring, or a SettingsError
    naming OSTIARY_SECRET_KEYS and what to do
    (docs/decisions.md#the-keyrings-first-secret-writes-every-secret-reads)."""
    with factory() as db:
        rows = store.published(db)
    lost = []
    for row in rows:
        try:
            keyring.decrypt(row.private_key_enc, _context(row.kid))
        except DecryptError:
            lost.append(row.kid)
    if lost:
        raise SettingsError("OSTIARY_SECRET_KEYS", keyring_mismatch(len(lost)))


def keyring_mismatch(count: int | None = None) -> str:
    what = f"{count} signing key{'s' if count != 1 else ''}" if count else "the signing keys"
    return (
        f"no secret in it decrypts {what} stored in the database; put back the secret they were "
        "encrypted with (new secrets go first, old ones after them)"
    )


def _reencrypt(rows: list[SigningKey], keyring: Keyring) -> None:
    """When the keyring's first secret changed, move every stored key onto it."""
    for row in rows:
        if not keyring.is_current(row.private_key_enc):
            pem = keyring.decrypt(row.private_key_enc, _context(row.kid))
            row.private_key_enc = keyring.encrypt(pem, _context(row.kid))


# -- lifecycle --------------------------------------------------------------------------------


def ensure_keys(factory: sessionmaker[Session], settings: Settings, keyring: Keyring) -> None:
    """First start: one active and one next key. Later starts: nothing to do."""
    with transaction(factory) as db:
        if store.by_state(db, ACTIVE) and store.by_state(db, NEXT):
            return
        jobs.lock(db, LOCK)
        _repair(db, settings, keyring)


def _repair(db: Session, settings: Settings, keyring: Keyring) -> None:
    if not store.by_state(db, ACTIVE):
        nexts = store.by_state(db, NEXT)
        if nexts:
            nexts[0].state, nexts[0].activated_at = ACTIVE, now()
            audit.record(db, "key.activated", kid=nexts[0].kid, alg=nexts[0].alg)
        else:
            active = store.add(db, new_key(settings.signing_alg, ACTIVE, keyring))
            audit.record(db, "key.created", kid=active.kid, alg=active.alg, state=ACTIVE)
    if not store.by_state(db, NEXT):
        nxt = store.add(db, new_key(settings.signing_alg, NEXT, keyring))
        audit.record(db, "key.created", kid=nxt.kid, alg=nxt.alg, state=NEXT)


def rotate(db: Session, settings: Settings, keyring: Keyring, *, force: bool = False, actor_id: str | None = None) -> SigningKey:
    """Promote next to active, retire the old active, create a new next. Returns the new active.

    The caller owns the transaction; this takes the rotation lock inside it.
    """
    jobs.lock(db, LOCK)
    _repair(db, settings, keyring)
    t = now()
    nxt = store.by_state(db, NEXT)[0]
    youngest_safe = t - settings.jwks_max_age - reload_interval(settings)
    if not force and nxt.created_at > youngest_safe:
        wait = nxt.created_at - youngest_safe
        raise RotationRefused(
            f"the next key {nxt.kid} was published {t - nxt.created_at} s ago; resource servers may cache "
            f"the JWKS for {settings.jwks_max_age} s, so rotate in {wait} s, or force it (tokens it signs may be "
            "rejected by resource servers until their JWKS cache refreshes)"
        )
    for old in store.by_state(db, ACTIVE):
        old.state, old.retired_at = RETIRED, t
        audit.record(db, "key.retired", kid=old.kid, alg=old.alg, actor_id=actor_id)
    nxt.state, nxt.activated_at = ACTIVE, t
    audit.record(db, "key.activated", kid=nxt.kid, alg=nxt.alg, actor_id=actor_id)
    created = store.add(db, new_key(settings.signing_alg, NEXT, keyring))
    audit.record(db, "key.created", kid=created.kid, alg=created.alg, state=NEXT, actor_id=actor_id)
    _reencrypt(store.all_keys(db), keyring)
    delete_expired(db, settings)
    return nxt


def delete_expired(db: Session, settings: Settings) -> list[str]:
    deleted = store.delete_retired_before(db, now() - retired_key_lifetime(settings))
    for kid in deleted:
        audit.record(db, "key.deleted", kid=kid)
    return deleted


def rotate_if_due(factory: sessionmaker[Session], settings: Settings, keyring: Keyring) -> bool:
    """The scheduled rotation. Two replicas that both find it due rotate once: the second waits
    for the first one's lock, then finds the key no longer due."""
    with transaction(factory) as db:
        active = store.by_state(db, ACTIVE)
        if active and (active[0].activated_at or 0) + settings.key_rotation_period > now():
            delete_expired_if_any(db, settings)
            return False
        jobs.lock(db, LOCK)
        active = store.by_state(db, ACTIVE)  # read again under the lock
        if active and (active[0].activated_at or 0) + settings.key_rotation_period > now():
            return False
        rotate(db, settings, keyring, force=True)
        log.info("rotated signing keys on schedule")
        return True


def delete_expired_if_any(db: Session, settings: Settings) -> None:
    retired = store.by_state(db, RETIRED)
    if any((k.retired_at or 0) < now() - retired_key_lifetime(settings) for k in retired):
        jobs.lock(db, LOCK)
        delete_expired(db, settings)


# -- the in-memory view every request uses --------------------------------------------------


@dataclass(frozen=True)
class KeySnapshot:
    active_kid: str
    active_alg: str
    active_key: RSAKey | ECKey  # joserfc key with the private part
    jwks_json: bytes
    keyset: KeySet  # the published keys, for verifying our own tokens
    activated_at: int | None = None


class KeyCache:
    """Keys loaded once and re-read every few seconds, so another replica's rotation shows here
    well within the JWKS cache lifetime. Requests never decrypt a key themselves."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, keyring: Keyring):
        self._factory = factory
        self._keyring = keyring
        self._interval = reload_interval(settings)
        self._lock = threading.Lock()
        self._snapshot: KeySnapshot | None = None
        self._loaded_at = 0.0

    def snapshot(self) -> KeySnapshot:
        snap = self._snapshot
        if snap is None or time.monotonic() - self._loaded_at > self._interval:
            with self._lock:
                if self._snapshot is None or time.monotonic() - self._loaded_at > self._interval:
                    try:
                        self._snapshot = self._load()
                    except SQLAlchemyError:
                        if self._snapshot is None:
                            raise
                        # The database is away: keep signing and publishing the keys we have
                        # (they cannot have changed without it) and look again after the interval.
                        log.warning("cannot reload signing keys; keeping the loaded ones")
                    self._loaded_at = time.monotonic()
                snap = self._snapshot
        return snap

    def fresh_jwks(self) -> bytes | None:
        """The JWKS if the keys need no reload (no I/O: safe on the event loop), else None."""
        snap = self._snapshot
        return snap.jwks_json if snap is not None and time.monotonic() - self._loaded_at <= self._interval else None

    def invalidate(self) -> None:
        self._loaded_at = 0.0

    def _load(self) -> KeySnapshot:
        with self._factory() as db:
            rows = store.published(db)
        active = [r for r in rows if r.state == ACTIVE]
        if not active:
            raise RuntimeError("no active signing key")
        row = active[-1]
        previous = self._snapshot
        key = previous.active_key if previous and previous.active_kid == row.kid else private_key(row, self._keyring)
        order = {ACTIVE: 0, NEXT: 1, RETIRED: 2}
        jwks = {"keys": [r.public_jwk for r in sorted(rows, key=lambda r: (order[r.state], -r.created_at))]}
        return KeySnapshot(
            active_kid=row.kid,
            active_alg=row.alg,
            active_key=key,
            jwks_json=json.dumps(jwks, separators=(",", ":")).encode(),
            keyset=KeySet.import_key_set({"keys": [r.public_jwk for r in rows]}),
            activated_at=row.activated_at,
        )

    def sign(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        """Sign with the single active key, naming it in the header (RFC 7515 §4.1.4)."""
        snap = self.snapshot()
        header = {"alg": snap.active_alg, "kid": snap.active_kid, "typ": typ}
        return jwt.encode(header, claims, snap.active_key)
