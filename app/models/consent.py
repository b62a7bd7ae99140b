from __future__ import annotations

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base, now


class Consent(Base):
    """A user's consent: these scopes of this resource for this client (incremental, merged)."""

    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("user_id", "client_id", "resource_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(Text, default="")  # space-separated, sorted
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now, onupdate=now)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)
    # The id of the request that last changed it, for the audit trail only.
    last_request_id: Mapped[str | None] = mapped_column(String(64))
    # What the user saw when consenting: the client's name and redirect hosts. When either
    # changes the consent no longer applies (docs/decisions.md#consent-is-bound-to-what-the-user-saw).
    client_name: Mapped[str | None] = mapped_column(String(200))
    redirect_hosts: Mapped[list[str] | None] = mapped_column(JSON)
