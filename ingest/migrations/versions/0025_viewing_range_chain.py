"""viewing range chain: each range of a viewing carries an HMAC over the one before it

Revision ID: 0025_viewing_range_chain
Revises: 0024_read_grants
"""

import sqlalchemy as sa
from alembic import op

revision = "0025_viewing_range_chain"
down_revision = "0024_read_grants"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("viewing_sessions") as batch:
        batch.add_column(sa.Column("last_mac", sa.String(length=64), nullable=True))
    with op.batch_alter_table("viewing_ranges") as batch:
        batch.add_column(sa.Column("mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("viewing_ranges") as batch:
        batch.drop_column("mac")
    with op.batch_alter_table("viewing_sessions") as batch:
        batch.drop_column("last_mac")
