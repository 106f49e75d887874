"""periodic jobs one instance at a time does (forgetting old trail points and console sessions)

Revision ID: 0014_periodic_jobs
Revises: 0013_alarm_provisional
"""

import sqlalchemy as sa
from alembic import op

from storage.db import UTCDateTime

revision = "0014_periodic_jobs"
down_revision = "0013_alarm_provisional"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "periodic_jobs",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("last_done_at", UTCDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_lone_worker_positions_at", "lone_worker_positions", ["at"])
    op.create_index("ix_user_sessions_expires_at", "user_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_user_sessions_expires_at", table_name="user_sessions")
    op.drop_index("ix_lone_worker_positions_at", table_name="lone_worker_positions")
    op.drop_table("periodic_jobs")
