from __future__ import annotations

from sqlalchemy import JSON, BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base, now


class BrowserSession(Base):
    """A signed-in browser. The cookie holds a random 256-bit id; only its HMAC is stored."""

    __tablename__ = "browser_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # "active", or "mfa" while the second factor is still owed.
    status: Mapped[str] = mapped_column(String(10), default="active")
    amr: Mapped[list[str]] = mapped_column(JSON, default=list)  # RFC 8176 methods, e.g. ["pwd", "otp"]
    auth_time: Mapped[int] = mapped_column(BigInteger, default=now)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    last_seen_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)  # absolute timeout
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
