"""alarm follow-up marker: alarms accepted on the fast path whose evidence and incident come after the ack

Revision ID: 0006_alarm_followup
Revises: 0004_alarms
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_alarm_followup"
down_revision = "0004_alarms"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.add_column(
            sa.Column("followup_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index("ix_alarms_followup_pending", "alarms", ["followup_pending"])


def downgrade() -> None:
    op.drop_index("ix_alarms_followup_pending", table_name="alarms")
    with op.batch_alter_table("alarms") as batch:
        batch.drop_column("followup_pending")
