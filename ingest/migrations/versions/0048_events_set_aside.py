"""events set aside: a device message's row that is not the service's receipt of it is kept apart

A row written into ``lone_worker_events`` by SQL with the event id of a message still to come (an
SOS, a cancel, a check-in) had the genuine message, when it came, taken for one stored long ago:
acknowledged to the device as a duplicate and acted on never. The intake now takes a row holding a
message's event id as the device's earlier message only when the service's seal of its receipt
holds (``chain_of_custody.receipt_upgrade.received``); any other is moved here, as it stood, named
by an ``event_set_aside`` custody entry, and the genuine message is acted on. Nothing is deleted:
the row is kept as the evidence of what was written behind the service's back.

Revision ID: 0048_events_set_aside
Revises: 0047_item_capture_sites
"""

import sqlalchemy as sa
from alembic import op

revision = "0048_events_set_aside"
down_revision = "0047_item_capture_sites"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lone_worker_events_set_aside",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("set_aside_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("columns", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lone_worker_events_set_aside")),
    )
    op.create_index("ix_lone_worker_events_set_aside_event_id", "lone_worker_events_set_aside", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_lone_worker_events_set_aside_event_id", table_name="lone_worker_events_set_aside")
    op.drop_table("lone_worker_events_set_aside")
