"""credential seals: bearer tokens and console sessions carry an HMAC over what they grant

Each row of ``api_tokens`` and ``user_sessions`` is sealed (``accounts.seals``) under a secret
derived from the service key, over its digest, user and expiry; a row without a seal that holds
signs nobody in. Rows made before this have none: console sessions end (their people sign in
again), and ``evidence seal-tokens --yes`` seals the bearer tokens still live.

Revision ID: 0029_credential_seals
Revises: 0028_idempotency_keys
"""

import sqlalchemy as sa
from alembic import op

revision = "0029_credential_seals"
down_revision = "0028_idempotency_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))
    with op.batch_alter_table("user_sessions") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user_sessions") as batch:
        batch.drop_column("seal")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("seal")
