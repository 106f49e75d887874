"""replay state seals: a lone-worker device's replay state carries the service's seal

``lone_worker_states.replay_state`` (a device's highest accepted sequence and its recent alarm and
check-in event ids) decides which of its messages are refused as replays. Written by SQL, an event
id still to come had the device's SOS acknowledged as a duplicate and never raised, and a raised
highest sequence had every message it sent refused. Each write of it by the intake now also writes
``replay_seal`` (``chain_of_custody.replay_seals``); a state whose seal does not hold is rebuilt from
the device's received messages. States stored before have none: each is taken only as far as the
device's received messages bear it out, and sealed at its next message.

Revision ID: 0049_replay_state_seals
Revises: 0048_events_set_aside
"""

import sqlalchemy as sa
from alembic import op

revision = "0049_replay_state_seals"
down_revision = "0048_events_set_aside"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lone_worker_states") as batch:
        batch.add_column(sa.Column("replay_seal", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lone_worker_states") as batch:
        batch.drop_column("replay_seal")
