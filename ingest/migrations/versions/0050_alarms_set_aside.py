"""alarms set aside: an alarm row holding a raise's event id that the service did not raise from it

``alarms.source_event_id`` is unique, and an alarm raised from a device's message holds its event
id. A row written by SQL holding the event id of an SOS still to come had the genuine SOS fail to
be stored, attempt after attempt, and never raised. The intake now takes an alarm row holding a
raise's event id as the alarm raised from it only when the service vouches for its keys (its
lifecycle seal, or its custody record); any other is moved here as it stood (or, when it is an
alarm of the service's with its key altered, copied here and its key put back), named by an
``alarm_set_aside`` custody entry, and the SOS is raised. Nothing is deleted.

Revision ID: 0050_alarms_set_aside
Revises: 0049_replay_state_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0050_alarms_set_aside"
down_revision = "0049_replay_state_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alarms_set_aside",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("alarm_id", sa.String(length=36), nullable=False),
        sa.Column("source_event_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("moved", sa.Boolean(), nullable=False),
        sa.Column("set_aside_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("columns", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alarms_set_aside")),
    )
    op.create_index("ix_alarms_set_aside_alarm_id", "alarms_set_aside", ["alarm_id"])


def downgrade() -> None:
    op.drop_index("ix_alarms_set_aside_alarm_id", table_name="alarms_set_aside")
    op.drop_table("alarms_set_aside")
