"""index authorization codes by family

Revoking a refresh token's family (RFC 7009 §2.1, a replayed code, reuse detection) also finds
the access token issued with the family's code: by family_id, which had no index, so the lookup
read the whole authorization_codes table (tests/test_query_plans.py).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 04:00:00
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_authorization_codes_family_id"), ["family_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_authorization_codes_family_id"))
