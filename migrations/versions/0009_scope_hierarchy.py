"""scope hierarchy

resource_scopes.implies: the names of other scopes of the same resource that this scope includes
(`mcp:write` implies `mcp:read`); MCP 2026-07-28 says resource servers must account for scope
hierarchies, so Ostiary publishes them and shows them on the consent page.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 23:41:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource_scopes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("implies", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("resource_scopes", schema=None) as batch_op:
        batch_op.drop_column("implies")
