"""lifecycle seals: an alarm's row seals its lifecycle and the deadline the clock acts on

``alarms`` lifecycle columns (status, acknowledgement due, acknowledged, resolved, severity ...) set
by SQL took an alarm off the clock: its escalation was silenced, and the sweep that puts deadlines
back read the same columns. Every write of them now writes ``lifecycle_seal`` with them
(``chain_of_custody.lifecycle_seals``). Alarms written before this have none: one whose status,
severity, outcome and deadline are what its custody record says is taken as it stands, and
``evidence upgrade-seals --yes`` (its ``seal-lifecycle`` step) seals them. The migration seals
nothing itself: it has no service key.

Revision ID: 0040_lifecycle_seals
Revises: 0039_heard_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0040_lifecycle_seals"
down_revision = "0039_heard_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.add_column(sa.Column("lifecycle_seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.drop_column("lifecycle_seal")
