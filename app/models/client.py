from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base, now

KIND_DYNAMIC = "dynamic"  # RFC 7591 dynamic registration
KIND_METADATA_DOCUMENT = "metadata_document"  # Client ID Metadata Document (client_id is a URL)
KIND_ADMIN = "admin"  # created by an operator (CLI or console)


class Client(Base):
    __tablename__ = "clients"

    # For a metadata-document client this is the document's https URL.
    id: Mapped[str] = mapped_column(String(2048), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(40), default="none")
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    response_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    scope: Mapped[str | None] = mapped_column(Text)
    application_type: Mapped[str | None] = mapped_column(String(20))
    # Everything the client registered or published, unknown fields included (RFC 7591 §2).
    client_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    registration_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    # Client ID Metadata Documents: when the cached document must be fetched again.
    metadata_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now, onupdate=now)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)
    # An admin vouches for a self-registered client: its errors may redirect before sign-in
    # (docs/decisions.md#errors-of-self-registered-clients-stay-on-ostiary-until-sign-in).
    trusted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # RFC 7662 §4: who may introspect what (docs/decisions.md#introspection-is-for-the-tokens-mcp-server). A client
    # that is an MCP server's own credential introspects tokens for that server; an admin may
    # let a client introspect any token.
    resource_id: Mapped[int | None] = mapped_column(ForeignKey("resources.id", ondelete="SET NULL"), index=True)
    introspect_any: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A machine client (client_credentials, MCP extension io.modelcontextprotocol/oauth-client-
    # credentials): the MCP server it may get tokens for; its allowed scopes are `scope`.
    grant_resource_id: Mapped[int | None] = mapped_column(ForeignKey("resources.id", ondelete="SET NULL"))
    # private_key_jwt (RFC 7523 §2.2): the client's public keys, inline or by URL (RFC 7591 §2).
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    jwks_uri: Mapped[str | None] = mapped_column(String(2048))
    # An admin disabled the client: refused at /authorize and /token until enabled again, nothing
    # revoked (docs/decisions.md#a-disabled-client-is-refused-until-enabled).
    disabled_at: Mapped[int | None] = mapped_column(BigInteger)

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    @property
    def is_trusted(self) -> bool:
        """Created by an admin, or marked trusted by one."""
        return self.kind == KIND_ADMIN or self.trusted

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"


class BlockedClient(Base):
    """A client id (above all a Client ID Metadata Document URL) an admin has blocked: it is
    refused before anything is fetched, and registering it again is refused too."""

    __tablename__ = "blocked_clients"

    id: Mapped[str] = mapped_column(String(2048), primary_key=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class UsedAssertion(Base):
    """The jti of a client assertion (RFC 7523 §3), kept until the assertion expires so that it
    is accepted once, on every replica; only its HMAC is stored."""

    __tablename__ = "used_assertions"

    jti_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class CimdHostRule(Base):
    """An administrator's rule for a Client ID Metadata Document host: `allow` or `deny`
    (docs/decisions.md#cimd-client-host-trust-policy)."""

    __tablename__ = "cimd_host_rules"

    host: Mapped[str] = mapped_column(String(253), primary_key=True)
    rule: Mapped[str] = mapped_column(String(5))  # "allow" | "deny"
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
