"""reach seals: members of staff and evidence items carry an HMAC over what decides who sees them

A security manager sees the footage worn by their site's staff and recorded by their site's
devices; an item derived from another is seen by whoever sees that one. So a member of staff's
site, and an evidence item's wearer, recording device and original, decide reach. Each row is
sealed (``chain_of_custody.reach_seals``) under a secret derived from the service key, and a row
whose seal does not hold widens nobody's reach. Rows made before this have none:
``evidence upgrade-seals --yes`` (its ``seal-reach`` step) seals those the custody ledger bears out
(a member of staff's latest ``staff_changed`` entry; an item's ``stored`` entry). The migration
seals nothing itself: it has no service key, and cannot tell a genuine row from a moved one.

Revision ID: 0035_reach_seals
Revises: 0034_grant_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0035_reach_seals"
down_revision = "0034_grant_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("staff") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))
    with op.batch_alter_table("evidence_items") as batch:
        batch.add_column(sa.Column("reach_seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evidence_items") as batch:
        batch.drop_column("reach_seal")
    with op.batch_alter_table("staff") as batch:
        batch.drop_column("seal")
