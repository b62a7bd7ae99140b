"""security review: trusted and introspecting clients, blocked client ids, TOTP lockout, consent binding

clients.trusted lets an admin vouch for a self-registered client; clients.resource_id and
clients.introspect_any say which tokens a client may introspect (RFC 7662 §4); blocked_clients
holds client ids (metadata-document URLs above all) an admin refused; users.mfa_failures,
mfa_retry_at and locked_at count consecutive wrong second-factor codes (NIST SP 800-63B
§5.2.2); grants.client_name and redirect_hosts record what the user consented to.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blocked_clients",
        sa.Column("id", sa.String(length=2048), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blocked_clients")),
    )
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trusted", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("resource_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("introspect_any", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index(batch_op.f("ix_clients_resource_id"), ["resource_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_clients_resource_id_resources"), "resources", ["resource_id"], ["id"], ondelete="SET NULL"
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mfa_failures", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("mfa_retry_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("locked_at", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("redirect_hosts", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_column("redirect_hosts")
        batch_op.drop_column("client_name")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("locked_at")
        batch_op.drop_column("mfa_retry_at")
        batch_op.drop_column("mfa_failures")
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_clients_resource_id_resources"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_clients_resource_id"))
        batch_op.drop_column("introspect_any")
        batch_op.drop_column("resource_id")
        batch_op.drop_column("trusted")
    op.drop_table("blocked_clients")
