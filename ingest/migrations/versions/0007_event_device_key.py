"""lone-worker events keep the device key their signature was verified with at accept

Revision ID: 0007_event_device_key
Revises: 0006_alarm_followup
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_event_device_key"
down_revision = "0006_alarm_followup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lone_worker_events") as batch:
        batch.add_column(sa.Column("device_public_key", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lone_worker_events") as batch:
        batch.drop_column("device_public_key")
