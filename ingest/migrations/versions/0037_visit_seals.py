"""visit seals: lone visits carry an HMAC over their device, id, wearer and missed check-in alarm

A visit's missed check-in raises an alarm that takes the visit's wearer, and its end clears the
alarm it names. Each row is sealed by the service as it opens the visit
(``chain_of_custody.visit_seals``), and a visit whose seal does not hold lends no wearer. Visits
opened before this have none: ``evidence upgrade-seals --yes`` (its ``seal-visits`` step) seals
those whose wearer the custody ledger bears out. The migration seals nothing itself: it has no
service key, and cannot tell a genuine row from an altered one.

Revision ID: 0037_visit_seals
Revises: 0036_alarm_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0037_visit_seals"
down_revision = "0036_alarm_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lone_worker_visits") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lone_worker_visits") as batch:
        batch.drop_column("seal")
