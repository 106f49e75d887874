"""alarm link steps: a partial index on the ledger's linked and unlinked entries of no item, by the
alarm they name

An alarm's link to an incident grants access only while the ledger's latest step for that alarm and
incident says linked (``incidents.access.alarm_link_on_custody``). Alarm link steps belong to no
item, so the item index (``0027_custody_link_steps``) gave every alarm link of an incident a scan of
every alarm's link steps in the ledger; this index makes it one search by alarm. The expression is
the one ``chain_of_custody.models.named_alarm`` spells for each database.

Revision ID: 0041_alarm_link_steps
Revises: 0040_lifecycle_seals
"""

from alembic import op

revision = "0041_alarm_link_steps"
down_revision = "0040_lifecycle_seals"
branch_labels = None
depends_on = None

NAMED_ALARM = {
    "sqlite": "CAST(json_extract(details, '$.alarm') AS TEXT)",
    "postgresql": "((details)::json ->> 'alarm')",
}
STEPS = "item_id IS NULL AND action IN ('linked', 'unlinked')"


def upgrade() -> None:
    alarm = NAMED_ALARM[op.get_bind().dialect.name]
    op.execute(f"CREATE INDEX ix_custody_entries_alarm_link_steps ON custody_entries ({alarm}, seq) WHERE {STEPS}")


def downgrade() -> None:
    op.drop_index("ix_custody_entries_alarm_link_steps", table_name="custody_entries")
