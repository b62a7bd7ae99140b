from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base, now

NEXT, ACTIVE, RETIRED = "next", "active", "retired"


class SigningKey(Base):
    """A JWS signing key: next -> active -> retired -> deleted (see app/keys.py)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10), index=True)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The private key (PKCS#8 PEM) encrypted with AES-GCM under the keyring's first secret.
    private_key_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    activated_at: Mapped[int | None] = mapped_column(BigInteger)
    retired_at: Mapped[int | None] = mapped_column(BigInteger)
