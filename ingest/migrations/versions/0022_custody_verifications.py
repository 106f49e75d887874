"""custody verifications: the service's verification asked for over HTTP, run as a leased job

Revision ID: 0022_custody_verifications
Revises: 0020_exhibit_references
"""

import sqlalchemy as sa
from alembic import op

import storage.db

revision = "0022_custody_verifications"
down_revision = "0020_exhibit_references"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "custody_verifications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("item_id", sa.String(length=36), nullable=True),
        sa.Column("check_objects", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("running", sa.String(length=16), nullable=True),
        sa.Column("progress", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_custody_verifications")),
        sa.UniqueConstraint("running", name=op.f("uq_custody_verifications_running")),
    )


def downgrade() -> None:
    op.drop_table("custody_verifications")
