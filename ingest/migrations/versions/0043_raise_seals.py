"""raise seals: an alarm's row seals its provisional flag, note, position and payload item

``alarms`` columns the lifecycle seal does not cover (``provisional``, ``note``, ``lat``, ``lon``,
``accuracy_m``, ``evidence_item_id``) set by SQL sent responders to a wrong place, showed another
item as the alarm's payload, or left it never made whole. Every write of them now writes
``raise_seal`` with them (``chain_of_custody.raise_seals``). Alarms written before this have none
and are shown as they stand; ``evidence upgrade-seals --yes`` (its ``seal-raise`` step) seals those
the custody record bears out. The migration seals nothing itself: it has no service key.

Revision ID: 0043_raise_seals
Revises: 0042_outbox_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0043_raise_seals"
down_revision = "0042_outbox_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.add_column(sa.Column("raise_seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.drop_column("raise_seal")
