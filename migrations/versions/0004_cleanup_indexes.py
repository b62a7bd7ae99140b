"""indexes for the expired-data cleanup job

The periodic cleanup (app/cleanup.py) finds rotated refresh tokens whose sealed successor must be
forgotten (used_at), revoked refresh tokens (revoked_at) and idle browser sessions (last_seen_at)
without scanning their tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refresh_tokens_used_at"), ["used_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_refresh_tokens_revoked_at"), ["revoked_at"], unique=False)
    with op.batch_alter_table("browser_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_browser_sessions_last_seen_at"), ["last_seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("browser_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_browser_sessions_last_seen_at"))
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_revoked_at"))
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_used_at"))
