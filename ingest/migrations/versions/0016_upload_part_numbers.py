"""each write of a dock upload part takes a part number never used before

A writer that lost its lease may still send a part after the newer writer sent the part at the same
offset; with numbers taken from the offset the late one replaced bytes already acknowledged. Part
numbers now come from a counter of the upload row, fenced by the lease.

Revision ID: 0016_upload_part_numbers
Revises: 0015_device_over_share
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_upload_part_numbers"
down_revision = "0015_device_over_share"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dock_uploads") as batch:
        batch.add_column(sa.Column("parts_issued", sa.Integer(), nullable=False, server_default="0"))
    # Open uploads numbered their parts by offset: start past every number such a writer could use.
    op.execute(
        "UPDATE dock_uploads SET parts_issued = (length + part_size - 1) / part_size WHERE status = 'open'"
    )


def downgrade() -> None:
    with op.batch_alter_table("dock_uploads") as batch:
        batch.drop_column("parts_issued")
