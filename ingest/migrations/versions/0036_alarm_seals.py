"""alarm seals: alarms carry an HMAC over their site, wearer, device and voice memo item

An alarm's site decides which control room reads it and streams its voice memo, and its memo item
is streamed to whoever reads it. Each row is sealed by the service as it records it
(``chain_of_custody.alarm_seals``), and an alarm whose seal does not hold reaches no site's readers.
Alarms raised before this have none: ``evidence upgrade-seals --yes`` (its ``seal-reach`` step)
seals those whose site and memo the custody ledger bears out. The migration seals nothing itself:
it has no service key, and cannot tell a genuine row from a moved one.

Revision ID: 0036_alarm_seals
Revises: 0035_reach_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0036_alarm_seals"
down_revision = "0035_reach_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.drop_column("seal")
