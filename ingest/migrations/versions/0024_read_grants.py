"""read grants: a read's reason stated in a request body, an opaque token in the address instead

Revision ID: 0024_read_grants
Revises: 0023_viewing_sessions
"""

import sqlalchemy as sa
from alembic import op

import storage.db

revision = "0024_read_grants"
down_revision = "0023_viewing_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "read_grants",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("sign_in", sa.String(length=64), nullable=False),
        sa.Column("use", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_read_grants")),
    )
    op.create_index(op.f("ix_read_grants_expires_at"), "read_grants", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_read_grants_expires_at"), table_name="read_grants")
    op.drop_table("read_grants")
