"""CIMD client-host trust policy

cimd_host_rules: hosts an administrator allows or denies as Client ID Metadata Document hosts,
managed in the console; the settings' lists apply on top (see docs/decisions.md).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 23:42:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cimd_host_rules",
        sa.Column("host", sa.String(length=253), nullable=False),
        sa.Column("rule", sa.String(length=5), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("host", name=op.f("pk_cimd_host_rules")),
    )


def downgrade() -> None:
    op.drop_table("cimd_host_rules")
