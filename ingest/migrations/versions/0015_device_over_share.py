"""a lone-worker device that sends beyond its fair share of the alarm consumer is flagged on its state row

Revision ID: 0015_device_over_share
Revises: 0014_periodic_jobs
"""

import sqlalchemy as sa
from alembic import op

from storage.db import UTCDateTime

revision = "0015_device_over_share"
down_revision = "0014_periodic_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not indexed, like every column of this row a device's messages touch (see migration 0008).
    with op.batch_alter_table("lone_worker_states") as batch:
        batch.add_column(sa.Column("over_share_since", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lone_worker_states") as batch:
        batch.drop_column("over_share_since")
