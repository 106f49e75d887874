"""positions of devices while they have an alarm open: the trail on the control room's map

Revision ID: 0011_position_trails
Revises: 0010_user_sessions
"""

import sqlalchemy as sa
from alembic import op

from storage.db import UTCDateTime

revision = "0011_position_trails"
down_revision = "0010_user_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lone_worker_positions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("accuracy_m", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_lone_worker_positions"),
        sa.UniqueConstraint("device_id", "at", name="uq_lone_worker_positions_device_at"),
    )


def downgrade() -> None:
    op.drop_table("lone_worker_positions")
