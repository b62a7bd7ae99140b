"""Passwords: argon2id (argon2-cffi's RFC 9106 profile), rehash on verify, and the same work for
an unknown user as for a known one, so that timing does not reveal which usernames exist."""

from __future__ import annotations

import contextlib

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 takes any length; bound the work an attacker can ask for

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("ostiary-dummy-password-for-unknown-users")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_problem(password: str) -> str | None:
    if len(password) < MIN_LENGTH:
        return f"The password must be at least {MIN_LENGTH} characters long."
    if len(password) > MAX_LENGTH:
        return f"The password must be at most {MAX_LENGTH} characters long."
    return None


def verify_password(stored_hash: str | None, password: str) -> tuple[bool, str | None]:
    """(matches, new_hash). new_hash is set when the stored hash uses outdated parameters."""
    if len(password) > MAX_LENGTH:
        password = password[:MAX_LENGTH]
    if not stored_hash:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        return False, None
    try:
        _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    if _hasher.check_needs_rehash(stored_hash):
        return True, _hasher.hash(password)
    return True, None
