from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base, now


class IdentityProvider(Base):
    """An organisation's OpenID Connect provider: users may sign in through it (with client
    credentials at it), and/or Ostiary trusts the ID-JAGs it issues (enterprise-managed
    authorization). Its keys come from its discovery document's jwks_uri."""

    __tablename__ = "identity_providers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(2048), unique=True)
    client_id: Mapped[str | None] = mapped_column(String(255))
    client_secret_enc: Mapped[str | None] = mapped_column(Text)  # encrypted under the keyring
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    groups_claim: Mapped[str | None] = mapped_column(String(100))
    allowed_domains: Mapped[list[str]] = mapped_column(JSON, default=list)
    id_jag: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class UserIdentity(Base):
    """A user as an upstream provider knows them: linked by (issuer, sub), never by email."""

    __tablename__ = "user_identities"

    issuer: Mapped[str] = mapped_column(String(2048), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    last_seen_at: Mapped[int | None] = mapped_column(BigInteger)
