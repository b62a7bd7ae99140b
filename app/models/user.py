from __future__ import annotations

import uuid

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base, now


class User(Base):
    __tablename__ = "users"

    # The `sub` of every token: random, never reused, never the username.
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_at: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now, onupdate=now)
    last_login_at: Mapped[int | None] = mapped_column(BigInteger)
    # TOTP (RFC 6238): the shared secret encrypted under the keyring (set while enrolling,
    # enabled once confirmed), and the last time step accepted, so that a code is used once.
    totp_secret_enc: Mapped[str | None] = mapped_column(Text)
    totp_enabled_at: Mapped[int | None] = mapped_column(BigInteger)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    # Second-factor guessing (NIST SP 800-63B §5.2.2): consecutive wrong codes, the earliest
    # time the next may be tried, and the lock after too many
    # (docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row).
    mfa_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    mfa_retry_at: Mapped[int | None] = mapped_column(BigInteger)
    locked_at: Mapped[int | None] = mapped_column(BigInteger)
    # Access policy: a resource scope may be limited to some groups.
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    @property
    def mfa_enabled(self) -> bool:
        return self.totp_enabled_at is not None


class RecoveryCode(Base):
    """A one-time TOTP recovery code; only its HMAC is stored. Using one deletes the row."""

    __tablename__ = "recovery_codes"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class PasswordSetupToken(Base):
    """A one-time link an admin hands to a user to set their password; only its HMAC is stored."""

    __tablename__ = "password_setup_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
