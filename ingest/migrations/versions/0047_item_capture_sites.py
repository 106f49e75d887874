"""item capture sites: an evidence item keeps the site it was captured under

A security manager saw an item by site when its wearer was one of their site's staff or its
recording device was one of their site's devices at the time of asking: an administrator who
re-enrolled a lone-worker device or a camera at another site gave that site's managers every past
item of the device (its alarm payloads, its voice memos, its clips and their redacted copies).
``evidence_items.site`` now keeps the site the item was captured under (the alarm's sealed site, the
camera's site as its clip is recorded, the original's for a derived item), covered by the item's
reach seal when present (``chain_of_custody.reach_seals``), and the device half of the rule reads
it (``incidents.access.of_reach``). Items recorded before have none, and their reach by device
follows the device's site now, as before. The migration writes no site itself: it has no key to
seal it with.

Revision ID: 0047_item_capture_sites
Revises: 0046_visit_sites
"""

import sqlalchemy as sa
from alembic import op

revision = "0047_item_capture_sites"
down_revision = "0046_visit_sites"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evidence_items") as batch:
        batch.add_column(sa.Column("site", sa.String(length=64), nullable=True))
        batch.create_index("ix_evidence_items_site", ["site"])


def downgrade() -> None:
    with op.batch_alter_table("evidence_items") as batch:
        batch.drop_index("ix_evidence_items_site")
        batch.drop_column("site")
