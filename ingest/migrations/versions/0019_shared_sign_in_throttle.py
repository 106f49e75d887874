"""the sign-in throttle's state in the database, shared by every replica

Each process counted failed sign-ins on its own, so with several replicas a guesser had each
replica's allowance. The failures and the token buckets are now rows every process reads and
updates in one transaction; usernames and addresses are kept only as digests.

Revision ID: 0019_shared_sign_in_throttle
Revises: 0018_subject_access_requests
"""

import sqlalchemy as sa
from alembic import op

revision = "0019_shared_sign_in_throttle"
down_revision = "0018_subject_access_requests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_in_failures",
        sa.Column("username_key", sa.String(64), primary_key=True),
        sa.Column("client_key", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
    )
    op.create_index("ix_sign_in_failures_updated", "sign_in_failures", ["updated"])
    op.create_table(
        "sign_in_buckets",
        sa.Column("scope", sa.String(8), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_sign_in_buckets_at", "sign_in_buckets", ["at"])


def downgrade() -> None:
    op.drop_index("ix_sign_in_buckets_at", "sign_in_buckets")
    op.drop_table("sign_in_buckets")
    op.drop_index("ix_sign_in_failures_updated", "sign_in_failures")
    op.drop_table("sign_in_failures")
