"""TOTP recovery codes as rows, the TOTP replay guard, one-time password setup links

Recovery codes move from a JSON list on users to a table so that using one is a single
conditional DELETE (each code usable once, even under concurrent sign-ins).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 06:59:22.951784
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "password_setup_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_password_setup_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_password_setup_tokens")),
    )
    with op.batch_alter_table("password_setup_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_password_setup_tokens_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_password_setup_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "recovery_codes",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_recovery_codes_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "code_hash", name=op.f("pk_recovery_codes")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch_op.drop_column("recovery_code_hashes")


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recovery_code_hashes", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.drop_column("totp_last_step")

    op.drop_table("recovery_codes")
    with op.batch_alter_table("password_setup_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_password_setup_tokens_user_id"))
        batch_op.drop_index(batch_op.f("ix_password_setup_tokens_expires_at"))

    op.drop_table("password_setup_tokens")
