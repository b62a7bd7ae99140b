from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.infra.db import Base, now


class Resource(Base):
    """An MCP server (RFC 8707 resource / RFC 9728 protected resource)."""

    __tablename__ = "resources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(String(2048), unique=True)  # canonical form
    name: Mapped[str] = mapped_column(String(200))
    token_ttl: Mapped[int | None] = mapped_column(Integer)  # None: the settings default
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now, onupdate=now)

    scopes: Mapped[list[ResourceScope]] = relationship(
        back_populates="resource", cascade="all, delete-orphan", order_by="ResourceScope.position", lazy="selectin"
    )


class ResourceScope(Base):
    __tablename__ = "resource_scopes"
    __table_args__ = (UniqueConstraint("resource_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # None: anyone may be granted this scope; otherwise only members of one of these groups.
    allowed_groups: Mapped[list[str] | None] = mapped_column(JSON)
    position: Mapped[int] = mapped_column(Integer, default=0)
    # Other scopes of this resource that this one includes (`mcp:write` implies `mcp:read`).
    implies: Mapped[list[str] | None] = mapped_column(JSON)

    resource: Mapped[Resource] = relationship(back_populates="scopes")
