"""The second factor: enrolling TOTP, checking a code or a recovery code at sign-in, resetting.

The TOTP secret is stored encrypted under the keyring, bound to its user; recovery codes are
stored as HMACs and each works once; a TOTP code works once (RFC 6238 §5.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import User
from app.security import totp
from app.security.secrets import DecryptError, Keyring
from app.services import audit
from app.stores import mfa as store
from app.stores import sessions as sessions_store
from app.stores import tokens as tokens_store
from app.stores import users as users_store

# Consecutive wrong codes (NIST SP 800-63B §5.2.2 allows at most 100 before a lock;
# docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row): the first
# FREE_FAILURES are free, then each attempt waits 2^(n - FREE_FAILURES) seconds (at most
# MAX_DELAY), and the LOCK_AFTER-th locks the account until an admin or a password link lifts it. With three valid codes at any moment, 20 guesses
# succeed with probability 6 in 100,000 per lock.
FREE_FAILURES = 5
LOCK_AFTER = 20
MAX_DELAY = 900


def delay_after(failures: int) -> int:
    """Seconds to wait before the next attempt once `failures` consecutive codes were wrong."""
    return 0 if failures < FREE_FAILURES else min(2 ** (failures - FREE_FAILURES), MAX_DELAY)


@dataclass(frozen=True)
class Verdict:
    method: str | None  # "otp" or "recovery" when right
    why: str = ""  # wrong_code, reused_code, wrong_recovery_code, malformed, wait, locked
    retry_after: int = 0  # for "wait"
    locked_now: bool = False  # this failure locked the account


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


def verify(db: Session, keyring: Keyring, user: User, typed: str) -> Verdict:
    """Check a second-factor code at sign-in, counting consecutive failures race-free: the
    attempt is counted before the code is checked (one conditional UPDATE) and uncounted when
    it is right, so parallel guesses cannot pass the cap."""
    t = now()
    failures, retry_at, locked_at = store.attempt_state(db, user.id)
    if locked_at is not None:
        return Verdict(None, "locked")
    if retry_at is not None and retry_at > t:
        return Verdict(None, "wait", retry_at - t)
    if not store.reserve_attempt(db, user.id, failures, t, t + delay_after(failures + 1)):
        # Another attempt for this user is being checked, or just failed: try again shortly.
        _, retry_at, locked_at = store.attempt_state(db, user.id)
        if locked_at is not None:
            return Verdict(None, "locked")
        return Verdict(None, "wait", max(1, (retry_at or t) - t))
    method, why = check(db, keyring, user, typed)
    if method is not None:
        store.clear_failures(db, user.id)
        return Verdict(method)
    locked_now = failures + 1 >= LOCK_AFTER and users_store.lock(db, user.id, t)
    if locked_now:
        audit.record(db, "user.locked", user_id=user.id, username=user.username, reason="mfa_failures", failures=failures + 1)
    return Verdict(None, why, locked_now=locked_now)


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


def reset(db: Session, user: User, *, actor_id: str | None = None, via: str = "admin") -> bool:
    """Turn TOTP off (an admin helping a user who lost their device); they may enrol again.
    False, and nothing done, if the user has no second factor, not even one being set up."""
    if not user.mfa_enabled and not user.totp_secret_enc:
        return False
    store.reset(db, user.id)
    # Sessions signed in with the old factor end, and the tokens issued through them
    # (docs/decisions.md#credentials-change-tokens-end): the next sign-in is with the new setup.
    sessions_store.remove_for_user(db, user.id)
    tokens_store.revoke(db, at=now(), reason="mfa_reset", user_id=user.id)
    audit.record(db, "mfa.reset", user_id=user.id, username=user.username, actor_id=actor_id, via=via)
    return True
