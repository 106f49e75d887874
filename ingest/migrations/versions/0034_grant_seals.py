"""grant seals: incident assignments and export jobs carry an HMAC over what they grant

An active row of ``incident_assignments`` opens an incident and everything linked to it to an
investigator, and an ``export_jobs`` row decides what its download links hand out (originals or
not, which items, on whose role). Each is sealed (``incidents.grants``) under a secret derived
from the service key; a row without a seal that holds grants nothing. Rows made before this have
none: ``evidence seal-grants --yes`` seals those the custody ledger bears out (the assignment's
latest ``user_changed`` entry assigns that row; the job's ``export_requested`` entry records it as
it stands). The migration seals nothing itself: it has no service key, and it cannot tell a
genuine row from a planted one without the ledger.

Revision ID: 0034_grant_seals
Revises: 0033_revival_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0034_grant_seals"
down_revision = "0033_revival_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for name in ("incident_assignments", "export_jobs"):
        with op.batch_alter_table(name) as batch:
            batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    for name in ("export_jobs", "incident_assignments"):
        with op.batch_alter_table(name) as batch:
            batch.drop_column("seal")
