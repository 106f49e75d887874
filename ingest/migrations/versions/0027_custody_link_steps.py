"""custody link steps: a partial index on the ledger's linked and unlinked entries by item

An incident link grants access only while the ledger's latest step for it says linked
(``incidents.access``); this index makes that one look-up per link, however many entries the item has.

Revision ID: 0027_custody_link_steps
Revises: 0026_list_keyset_indexes
"""

import sqlalchemy as sa
from alembic import op

revision = "0027_custody_link_steps"
down_revision = "0026_list_keyset_indexes"
branch_labels = None
depends_on = None

STEPS = sa.text("action IN ('linked', 'unlinked')")


def upgrade() -> None:
    op.create_index(
        "ix_custody_entries_link_steps",
        "custody_entries",
        ["item_id", "seq"],
        postgresql_where=STEPS,
        sqlite_where=STEPS,
    )


def downgrade() -> None:
    op.drop_index("ix_custody_entries_link_steps", table_name="custody_entries")
