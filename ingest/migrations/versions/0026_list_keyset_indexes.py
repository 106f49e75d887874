"""list keyset indexes: alarms, evidence items and incidents are paged by (time, key), newest first

Each list's page starts right after the previous page's last row, (time, key) < (t, k), in the
order the list is read; an index on both columns lets SQLite and PostgreSQL start the scan there
and read only the page, however deep. Each replaces the index on the time alone, which it covers.

Revision ID: 0026_list_keyset_indexes
Revises: 0025_viewing_range_chain
"""

from alembic import op

revision = "0026_list_keyset_indexes"
down_revision = "0025_viewing_range_chain"
branch_labels = None
depends_on = None

# (table, the index on the time alone, the new index, its columns)
INDEXES = (
    ("alarms", "ix_alarms_raised_at", "ix_alarms_raised_at_id", ["raised_at", "id"]),
    ("evidence_items", "ix_evidence_items_created_at", "ix_evidence_items_created_at_id", ["created_at", "id"]),
    ("incidents", "ix_incidents_occurred_at", "ix_incidents_occurred_at_reference", ["occurred_at", "reference"]),
)


def upgrade() -> None:
    for table, old, new, columns in INDEXES:
        op.create_index(new, table, columns, unique=False)
        op.drop_index(old, table_name=table)


def downgrade() -> None:
    for table, old, new, columns in INDEXES:
        op.create_index(old, table, columns[:1], unique=False)
        op.drop_index(new, table_name=table)
