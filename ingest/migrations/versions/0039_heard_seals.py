"""heard seals: a lone-worker device's state row seals when the device was last heard from

``lone_worker_states.last_seen_at`` decides when a silent device raises its offline alarm: moved
forward by SQL it silenced the alarm. Each message that writes it now writes ``heard_seal`` with it
(``chain_of_custody.heard_seals``). Rows written before this have none: ``evidence upgrade-seals
--yes`` (its ``seal-last-heard`` step) seals them, and until then one that comes due counts as
silent. The migration seals nothing itself: it has no service key.

Revision ID: 0039_heard_seals
Revises: 0038_incident_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0039_heard_seals"
down_revision = "0038_incident_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lone_worker_states") as batch:
        batch.add_column(sa.Column("heard_seal", sa.String(length=96), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lone_worker_states") as batch:
        batch.drop_column("heard_seal")
