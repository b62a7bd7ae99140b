"""DPoP-bound refresh tokens

refresh_tokens.jkt: the RFC 7638 thumbprint of the DPoP key a public client's refresh token is
bound to (RFC 9449 §5: a refresh token issued to a public client with a DPoP proof can only be
used with a proof of the same key). Replayed proof jti values share used_assertions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 23:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("jkt", sa.String(length=43), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_column("jkt")
