"""an alarm's marker is named for its state: ``provisional`` (acknowledged, not yet made whole)

Revision ID: 0013_alarm_provisional
Revises: 0012_export_build_leases
"""

from alembic import op

revision = "0013_alarm_provisional"
down_revision = "0012_export_build_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_alarms_followup_pending", table_name="alarms")
    with op.batch_alter_table("alarms") as batch:
        batch.alter_column("followup_pending", new_column_name="provisional")
    op.create_index("ix_alarms_provisional", "alarms", ["provisional"])


def downgrade() -> None:
    op.drop_index("ix_alarms_provisional", table_name="alarms")
    with op.batch_alter_table("alarms") as batch:
        batch.alter_column("provisional", new_column_name="followup_pending")
    op.create_index("ix_alarms_followup_pending", "alarms", ["followup_pending"])
