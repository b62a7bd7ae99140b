"""disabled clients

clients.disabled_at: when an admin disabled the client (console or `ostiary clients disable`);
while set, the client is refused at /authorize, /token, /revoke and /introspect (see
docs/decisions.md#a-disabled-client-is-refused-until-enabled).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-20 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_column("disabled_at")
