"""machine clients: client_credentials and private_key_jwt

clients.grant_resource_id is the MCP server a machine client (client_credentials) may get
tokens for, its allowed scopes being clients.scope; clients.jwks and clients.jwks_uri hold the
public keys of private_key_jwt clients (RFC 7591 §2). used_assertions remembers the jti of every
client assertion until it expires (RFC 7523 §3: a jti is used once).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 21:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_assertions",
        sa.Column("jti_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("jti_hash", name=op.f("pk_used_assertions")),
    )
    with op.batch_alter_table("used_assertions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_used_assertions_expires_at"), ["expires_at"], unique=False)
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grant_resource_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("jwks", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("jwks_uri", sa.String(length=2048), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_clients_grant_resource_id_resources"), "resources", ["grant_resource_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_clients_grant_resource_id_resources"), type_="foreignkey")
        batch_op.drop_column("jwks_uri")
        batch_op.drop_column("jwks")
        batch_op.drop_column("grant_resource_id")
    with op.batch_alter_table("used_assertions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_used_assertions_expires_at"))
    op.drop_table("used_assertions")
