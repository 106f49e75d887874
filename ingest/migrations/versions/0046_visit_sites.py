"""visit sites: a lone visit records the site its device was enrolled at when the visit began

A visit's missed check-in, and its device's offline alarm while on it, were raised at the site of
the device's row when they fell due: a device re-enrolled at another site in the meantime took the
visit's alarm, and with it the worker's start message and note (``GET /alarms/{id}/record``), to
the new site's managers, while the worker's own site never saw it. ``lone_worker_visits.site`` now
keeps the site the visit was begun under, covered by the visit's seal
(``chain_of_custody.visit_seals``). Visits begun before have none: their alarms are raised at the
site their custody record gives (the entry that opened the visit, and the device's enrolment then),
or, when it gives none, at the device's site as before, with a warning (``alarms.visits``). The
migration writes no site itself: it has no key to seal it with.

Revision ID: 0046_visit_sites
Revises: 0045_event_receipt_seals
"""

import sqlalchemy as sa
from alembic import op

revision = "0046_visit_sites"
down_revision = "0045_event_receipt_seals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lone_worker_visits") as batch:
        batch.add_column(sa.Column("site", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lone_worker_visits") as batch:
        batch.drop_column("site")
