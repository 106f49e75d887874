"""evidence items keep a BLAKE3 digest beside their SHA-256, for fast re-checks of stored objects

Both are taken in the pass that stores the object. Items stored before keep NULL and are re-checked
with SHA-256.

Revision ID: 0009_evidence_blake3
Revises: 0008_state_hot_updates
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_evidence_blake3"
down_revision = "0008_state_hot_updates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evidence_items") as batch:
        batch.add_column(sa.Column("blake3", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evidence_items") as batch:
        batch.drop_column("blake3")
