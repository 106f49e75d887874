"""outbox seals: an alarm outbox row seals its message, when it is due and when it was sent

``alarm_outbox`` rows set sent by SQL dropped an acknowledgement or escalation, a payload changed
by SQL was sent under the service's name, and a due time pushed on put a message off indefinitely.
Each row now carries ``seal`` (its message), ``due_seal`` and ``sent_seal``
(``chain_of_custody.outbox_seals``). Rows queued before this have none: they are taken as they
stand, and ``evidence upgrade-seals --yes`` (its ``seal-outbox`` step) seals them. The migration
seals nothing itself: it has no service key.

``lone_worker_states`` gains ``watched_seal`` over ``battery_low`` and ``active_visit_id``
(``chain_of_custody.watched_seals``): a row as inserted needs none, and one whose seal does not
hold is put back to the device's alarms and visits when next read.

Revision ID: 0042_outbox_seals
Revises: 0041_alarm_link_steps
"""

import sqlalchemy as sa
from alembic import op

revision = "0042_outbox_seals"
down_revision = "0041_alarm_link_steps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarm_outbox") as batch:
        batch.add_column(sa.Column("seal", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("due_seal", sa.String(length=96), nullable=True))
        batch.add_column(sa.Column("sent_seal", sa.String(length=96), nullable=True))
    with op.batch_alter_table("lone_worker_states") as batch:
        batch.add_column(sa.Column("watched_seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lone_worker_states") as batch:
        batch.drop_column("watched_seal")
    with op.batch_alter_table("alarm_outbox") as batch:
        batch.drop_column("sent_seal")
        batch.drop_column("due_seal")
        batch.drop_column("seal")
