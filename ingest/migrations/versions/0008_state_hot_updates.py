"""device state rows updated in place: no index on offline_due_at, pages half filled by inserts

Every device message updates its device's state row. With an indexed column among those it writes,
each update added index entries and left a dead row version that only VACUUM could clear; without
one, PostgreSQL updates the row on its own page (HOT) and prunes old versions as it goes.

Revision ID: 0008_state_hot_updates
Revises: 0007_event_device_key
"""

from alembic import op

revision = "0008_state_hot_updates"
down_revision = "0007_event_device_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_lone_worker_states_offline_due_at", table_name="lone_worker_states")
    if op.get_bind().dialect.name == "postgresql":
        # New pages only; an existing table takes it over as VACUUM FULL or CLUSTER rewrites it.
        op.execute("ALTER TABLE lone_worker_states SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE lone_worker_states RESET (fillfactor)")
    op.create_index("ix_lone_worker_states_offline_due_at", "lone_worker_states", ["offline_due_at"])
