"""viewing sessions: a player's ranged reads of one item recorded as one opened and one sealed custody step

Revision ID: 0023_viewing_sessions
Revises: 0022_custody_verifications
"""

import sqlalchemy as sa
from alembic import op

import storage.db

revision = "0023_viewing_sessions"
down_revision = "0022_custody_verifications"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "viewing_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("open_key", sa.String(length=64), nullable=True),
        sa.Column("item_id", sa.String(length=36), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("opened_seq", sa.BigInteger(), nullable=False),
        sa.Column("opened_at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ranges", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_seq", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["item_id"], ["evidence_items.id"], name=op.f("fk_viewing_sessions_item_id_evidence_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_viewing_sessions")),
        sa.UniqueConstraint("open_key", name=op.f("uq_viewing_sessions_open_key")),
    )
    op.create_index(op.f("ix_viewing_sessions_item_id"), "viewing_sessions", ["item_id"])
    op.create_index(op.f("ix_viewing_sessions_actor"), "viewing_sessions", ["actor"])
    op.create_index(op.f("ix_viewing_sessions_last_at"), "viewing_sessions", ["last_at"])
    op.create_table(
        "viewing_ranges",
        sa.Column("viewing_id", sa.String(length=36), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("first_byte", sa.BigInteger(), nullable=False),
        sa.Column("last_byte", sa.BigInteger(), nullable=False),
        sa.Column("at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["viewing_id"],
            ["viewing_sessions.id"],
            name=op.f("fk_viewing_ranges_viewing_id_viewing_sessions"),
        ),
        sa.PrimaryKeyConstraint("viewing_id", "n", name=op.f("pk_viewing_ranges")),
    )


def downgrade() -> None:
    op.drop_table("viewing_ranges")
    op.drop_index(op.f("ix_viewing_sessions_last_at"), table_name="viewing_sessions")
    op.drop_index(op.f("ix_viewing_sessions_actor"), table_name="viewing_sessions")
    op.drop_index(op.f("ix_viewing_sessions_item_id"), table_name="viewing_sessions")
    op.drop_table("viewing_sessions")
