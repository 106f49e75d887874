"""credential seals: bearer tokens and console sessions carry an HMAC over what they grant

Each row of ``api_tokens`` and ``user_sessions`` is sealed (``accounts.seals``) under a secret
derived from the service key, over its digest, user and expiry; a row without a seal that holds
signs nobody in. Rows made before this have none: console sessions end (their people sign in
again), and ``evidence seal-tokens --yes`` seals the bearer tokens still live.

Revision ID: 0029_credential_seals
Revises: 0028_idempotency_keys
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import storage.db

revision = "0029_credential_seals"
down_revision = "0028_idempotency_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))
    with op.batch_alter_table("user_sessions") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))
    # Sessions open now have no seal: they end here (their people sign in again), rather than be
    # refused, with a warning, at every request their browser makes until then.
    sessions = sa.table(
        "user_sessions", sa.column("ended_at", storage.db.UTCDateTime(timezone=True))
    )
    op.execute(sessions.update().where(sessions.c.ended_at.is_(None)).values(ended_at=datetime.now(UTC)))


def downgrade() -> None:
    with op.batch_alter_table("user_sessions") as batch:
        batch.drop_column("seal")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("seal")
