"""incident seals: incidents carry an HMAC over their site, wearer and footage window

An incident's site decides which security managers read it and everything linked to it, and its
footage window has the service link its wearer's clips as they arrive. Each row is sealed by the
service as it records those fields (``chain_of_custody.incident_seals``); an incident whose seal does
not hold is read by no site's managers and its window links nothing. Incidents opened before this
have none: ``evidence upgrade-seals --yes`` (its ``seal-incidents`` step) seals those whose site and
window the custody ledger bears out. The migration seals nothing itself: it has no service key, and
cannot tell a genuine row from a moved one.

Revision ID: 0038_incident_seals
Revises: 0037_visit_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0038_incident_seals"
down_revision = "0037_visit_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("seal")
