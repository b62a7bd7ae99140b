"""The second factor: enrolling TOTP, checking a code or a recovery code at sign-in, resetting.

The TOTP secret is stored encrypted under the keyring, bound to its user; recovery codes are
stored as HMACs and each works once; a TOTP code works once (RFC 6238 §5.2).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import User
from app.security import totp
from app.security.secrets import DecryptError, Keyring
from app.services import audit
from app.stores import audit as audit_store
from app.stores import mfa as store
from app.stores import sessions as sessions_store

# Wrong codes allowed per user in the window before the code page refuses to check more: with
# three valid codes at any time (drift), 10 guesses per 15 minutes is about 1 in 33,000 a day.
MAX_FAILURES = 10
FAILURE_WINDOW = 15 * 60


def _context(user_id: str) -> bytes:
    return b"totp:" + user_id.encode()


def _secret(keyring: Keyring, user: User) -> str | None:
    if not user.totp_secret_enc:
        return None
    try:
        return keyring.decrypt(user.totp_secret_enc, _context(user.id)).decode()
    except DecryptError:
        return None


def pending_secret(db: Session, keyring: Keyring, user: User) -> str:
    """The secret being enrolled: the one already shown (a reload shows the same QR code) or a
    new one."""
    secret = _secret(keyring, user) if not user.mfa_enabled else None
    if secret is None:
        secret = totp.new_secret()
        encrypted = keyring.encrypt(secret.encode(), _context(user.id))
        store.set_pending_secret(db, user.id, encrypted)
        user.totp_secret_enc = encrypted
    return secret


def enrolment(issuer: str, user: User, secret: str) -> dict[str, str]:
    """What the enrolment page shows: the QR code (inline SVG) and the key to type instead."""
    host = urlsplit(issuer).netloc
    uri = totp.provisioning_uri(secret, user.username, f"Ostiary {host}")
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return {"qr_svg": totp.qr_svg(uri), "secret": secret, "secret_grouped": grouped}


def _recovery_hashes(keyring: Keyring, user_id: str, codes: list[str]) -> list[str]:
    return [keyring.hash(totp.recovery_hash_input(user_id, totp.normalize(c))) for c in codes]


def confirm_enrolment(db: Session, keyring: Keyring, user: User, code: str) -> list[str] | None:
    """Enable TOTP if `code` matches the pending secret; return the recovery codes (shown once)."""
    secret = _secret(keyring, user)
    step = totp.matching_step(secret, totp.normalize(code)) if secret and not user.mfa_enabled else None
    if step is None or not store.enable(db, user.id, now(), step):
        return None
    codes = totp.new_recovery_codes()
    store.replace_recovery_codes(db, user.id, _recovery_hashes(keyring, user.id, codes))
    audit.record(db, "mfa.enabled", user_id=user.id, username=user.username)
    return codes


def too_many_failures(db: Session, user: User) -> bool:
    return audit_store.count_since(db, ("login.mfa_failed",), now() - FAILURE_WINDOW, user_id=user.id) >= MAX_FAILURES


def check(db: Session, keyring: Keyring, user: User, typed: str) -> tuple[str | None, str]:
    """("otp" or "recovery", "") when the second factor is right, else (None, why)."""
    value = totp.normalize(typed)
    if totp.looks_like_totp(value):
        secret = _secret(keyring, user)
        step = totp.matching_step(secret, value) if secret else None
        if step is None:
            return None, "wrong_code"
        if not store.use_step(db, user.id, step):
            return None, "reused_code"  # RFC 6238 §5.2: one-time only
        return "otp", ""
    if totp.looks_like_recovery_code(value):
        hashes = keyring.hashes(totp.recovery_hash_input(user.id, value))
        if store.use_recovery_code(db, user.id, hashes):
            return "recovery", ""
        return None, "wrong_recovery_code"
    return None, "malformed"


def recovery_codes_left(db: Session, user: User) -> int:
    return store.recovery_codes_left(db, user.id)


def reset(db: Session, user: User, *, actor_id: str) -> None:
    """Turn TOTP off (an admin helping a user who lost their device); they may enrol again."""
    store.reset(db, user.id)
    # Sessions signed in with the old factor end: the next sign-in is with the new setup.
    sessions_store.remove_for_user(db, user.id)
    audit.record(db, "mfa.reset", user_id=user.id, username=user.username, actor_id=actor_id)
