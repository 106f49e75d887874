"""revival seals: read grants sealed over what they stand for; console sessions' last activity sealed

Each row of ``read_grants`` is sealed (``ingest.read_grants``) under a secret derived from the
service key, over its item, person, sign-in, use, reason and expiry; a grant without a seal that
holds stands for no read. Grants live an hour at most: those open at the upgrade are forgotten,
and the person states the reason again.

Each console session keeps its last activity with an HMAC (``user_sessions.activity_seal``,
``accounts.sessions``), so its idle timeout cannot be undone by moving ``last_seen_at`` forward.
Sessions open at the upgrade have none: they end here, and their people sign in again.

Revision ID: 0033_revival_seals
Revises: 0032_user_seals
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import storage.db

revision = "0033_revival_seals"
down_revision = "0032_user_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.table("read_grants").delete())
    with op.batch_alter_table("read_grants") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))
    sessions = sa.table(
        "user_sessions", sa.column("ended_at", storage.db.UTCDateTime(timezone=True))
    )
    op.execute(sessions.update().where(sessions.c.ended_at.is_(None)).values(ended_at=datetime.now(UTC)))
    with op.batch_alter_table("user_sessions") as batch:
        batch.add_column(sa.Column("activity_seal", sa.String(length=96), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user_sessions") as batch:
        batch.drop_column("activity_seal")
    with op.batch_alter_table("read_grants") as batch:
        batch.drop_column("seal")
