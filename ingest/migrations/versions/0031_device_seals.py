"""device seals: each device row carries an HMAC over its identity and what it may speak for

Each row of ``devices`` is sealed (``devices.seals``) under a secret derived from the service key,
over its id, kind, status, public key, token digest, broker password hash, site and assigned
staff; a row without a seal that holds is refused as an unknown device. Rows made before this
have none: ``evidence seal-devices --yes`` seals them as they stand.

Revision ID: 0031_device_seals
Revises: 0030_evidence_block_lists
"""

import sqlalchemy as sa
from alembic import op

revision = "0031_device_seals"
down_revision = "0030_evidence_block_lists"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("seal")
