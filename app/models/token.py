from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base, now


class RefreshToken(Base):
    """One member of a rotation family. Only the HMAC of the token is stored.

    When a token is used it gets a successor; the successor's raw value is kept encrypted on the
    parent row until the grace window closes, so that a retry gets the *same* successor.
    """

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    parent_id: Mapped[int | None] = mapped_column(Integer, index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id", ondelete="SET NULL"), index=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(Text, default="")
    auth_time: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    used_at: Mapped[int | None] = mapped_column(BigInteger, index=True)
    successor_enc: Mapped[str | None] = mapped_column(Text)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, index=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(40))
    # The access token issued together with this refresh token, so that revoking the family can
    # also make that access token inactive at introspection.
    access_jti: Mapped[str | None] = mapped_column(String(64))
    access_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    # RFC 9449 §5: a public client's refresh token is bound to the DPoP key it was issued with.
    jkt: Mapped[str | None] = mapped_column(String(43))


class RevokedAccessToken(Base):
    """JWT access tokens revoked before they expire (RFC 7009), by jti, until they expire."""

    __tablename__ = "revoked_access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    revoked_at: Mapped[int] = mapped_column(BigInteger, default=now)
    reason: Mapped[str | None] = mapped_column(String(40))
