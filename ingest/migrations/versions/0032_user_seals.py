"""user seals: each user row carries an HMAC over what decides what the person may do

Each row of ``users`` is sealed (``accounts.seals``) under a secret derived from the service key,
over its id, username, role, site, password hash and active state; a row without a seal that
holds signs nobody in (password, bearer token or console session). Rows made before this have
none: ``evidence seal-users --yes`` seals those whose role, site, active state and password the
custody ledger records as they stand. The migration seals nothing itself: it has no service key,
and it cannot tell a genuine row from a planted one without the ledger.

Revision ID: 0032_user_seals
Revises: 0031_device_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0032_user_seals"
down_revision = "0031_device_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("seal")
