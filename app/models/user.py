from __future__ import annotations

import uuid

from sqlalchemy import JSON, BigInteger, Boolean, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, now


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
    # TOTP (RFC 6238): the shared secret encrypted under the keyring, recovery codes as HMACs.
    totp_secret_enc: Mapped[str | None] = mapped_column(Text)
    totp_enabled_at: Mapped[int | None] = mapped_column(BigInteger)
    recovery_code_hashes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Access policy: a resource scope may be limited to some groups.
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None
