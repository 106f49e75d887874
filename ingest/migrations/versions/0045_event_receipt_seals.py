"""event receipt seals: a device message's row carries the service's seal over its receipt

A device's key replaced at re-enrolment vouched for any stored message dated before its
replacement, whatever wrote it: whoever kept the old key could sign a message dated back (a
cancel, an end check-in, a raise saying "false alarm" somewhere else) and write it into the
database. Each accepted alarm or check-in's row now carries ``receipt_seal``, an HMAC under the
device rows' secret over the device, the event id, the SHA-256 of the bytes and the key they were
verified with, the one then in force (``chain_of_custody.raise_seals.receipt_seal``): a key since
replaced vouches only for the messages whose receipt it sealed. Rows stored before have none, so a
key replaced since vouches for none of them. The migration seals nothing itself: it has no key.

Revision ID: 0045_event_receipt_seals
Revises: 0044_alarm_sweep_checkpoint
"""

import sqlalchemy as sa
from alembic import op

revision = "0045_event_receipt_seals"
down_revision = "0044_alarm_sweep_checkpoint"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lone_worker_events") as batch:
        batch.add_column(sa.Column("receipt_seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lone_worker_events") as batch:
        batch.drop_column("receipt_seal")
