"""timer alarms set aside: an alarm row set aside may name no device event

An alarm row written by SQL that says it is whole and open, with no seal and no custody entry, was
taken as an alarm raised before the seals: the clock sealed the deadline its lifecycle gives and
escalated it as the service's. It is now set aside (``alarms_set_aside``) like a provisional row
the service never raised. The service's own timers raise alarms from no device event (offline,
missed check-in), so such a row may name none: ``source_event_id`` takes no value for it.

Revision ID: 0051_timer_alarms_set_aside
Revises: 0050_alarms_set_aside
"""

import sqlalchemy as sa
from alembic import op

revision = "0051_timer_alarms_set_aside"
down_revision = "0050_alarms_set_aside"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarms_set_aside") as batch:
        batch.alter_column("source_event_id", existing_type=sa.String(length=36), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("alarms_set_aside") as batch:
        batch.alter_column("source_event_id", existing_type=sa.String(length=36), nullable=False)
