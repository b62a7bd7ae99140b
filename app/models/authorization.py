from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base, now


class AuthorizationRequest(Base):
    """A validated /authorize request waiting for sign-in and consent.

    The browser carries an opaque handle; only its HMAC is stored here.
    """

    __tablename__ = "authorization_requests"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    redirect_uri_in_request: Mapped[bool] = mapped_column(Boolean, default=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str | None] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str | None] = mapped_column(String(100))
    max_age: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class AuthorizationCode(Base):
    """RFC 6749 §4.1.2: short-lived, single-use, bound to client, redirect URI and PKCE."""

    __tablename__ = "authorization_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id", ondelete="SET NULL"))
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    redirect_uri_in_request: Mapped[bool] = mapped_column(Boolean, default=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    code_challenge: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str | None] = mapped_column(Text)
    auth_time: Mapped[int] = mapped_column(BigInteger)
    # Every refresh token and access token issued from this code shares this family id, so a
    # replayed code can revoke them all (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3).
    family_id: Mapped[str] = mapped_column(String(36), index=True)  # revoking a family (RFC 7009 §2.1)
    access_jti: Mapped[str | None] = mapped_column(String(64))
    access_expires_at: Mapped[int | None] = mapped_column(BigInteger)  # an upper bound
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    consumed_at: Mapped[int | None] = mapped_column(BigInteger)

    # authlib's AuthorizationCodeMixin interface
    def get_redirect_uri(self) -> str | None:
        # OAuth 2.1 §4.1.3: required at /token (and identical) only if it was in the request.
        return self.redirect_uri if self.redirect_uri_in_request else None

    def get_scope(self) -> str:
        return self.scope
