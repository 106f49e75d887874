"""evidence block lists: the BLAKE3 of every 256 KiB block of an item's object, kept as it is stored

A ranged read checks only the blocks its range lies in against this list, which the item's signed
``stored`` custody entry commits to (``chain_of_custody.block_lists``). Items stored before have none.

Revision ID: 0030_evidence_block_lists
Revises: 0029_credential_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0030_evidence_block_lists"
down_revision = "0029_credential_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_block_lists",
        sa.Column("item_id", sa.String(length=36), nullable=False),
        sa.Column("block_size", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("digests", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_evidence_block_lists")),
    )


def downgrade() -> None:
    op.drop_table("evidence_block_lists")
