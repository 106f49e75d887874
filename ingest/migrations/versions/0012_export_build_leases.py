"""export builds are jobs any worker claims under a lease, and survive a restart

Also joins the branches each capability started from the backbone (incidents, exports, redaction,
alarms): from here on the history is one line.

Revision ID: 0012_export_build_leases
Revises: 0011_position_trails, 0002_incidents, 0003_exports, 0005_redaction
"""

import sqlalchemy as sa
from alembic import op

from storage.db import UTCDateTime

revision = "0012_export_build_leases"
down_revision = ("0011_position_trails", "0002_incidents", "0003_exports", "0005_redaction")
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_until", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
