"""alarm sweep checkpoint: where the clock's cursor over the ledger's alarm entries stands, sealed

The clock's sweep follows the alarms custody holds open with a cursor over the ledger; a new process
read every alarm entry ever written to find them. ``alarm_sweep_checkpoint`` (one row) keeps the
cursor's last entry and the open alarms, sealed with an HMAC under a secret derived from the service
key (``chain_of_custody.sweep_cursor``): a process starts from it when its seal holds and the ledger
bears it out, and reads the ledger whole otherwise. The migration writes no row: it has no key.

Revision ID: 0044_alarm_sweep_checkpoint
Revises: 0043_raise_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0044_alarm_sweep_checkpoint"
down_revision = "0043_raise_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alarm_sweep_checkpoint",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.Column("open_alarms", sa.Text(), nullable=False),
        sa.Column("seal", sa.String(length=64), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alarm_sweep_checkpoint")
