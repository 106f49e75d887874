"""a download link says why the package is disclosed to its recipient

The disclosure log records, for every disclosure, who received it, when, who authorised it and why.
The recipient, the issuer and the dates were already kept; the purpose was not.

Revision ID: 0017_link_purpose
Revises: 0016_upload_part_numbers
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_link_purpose"
down_revision = "0016_upload_part_numbers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_links") as batch:
        batch.add_column(sa.Column("purpose", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_links") as batch:
        batch.drop_column("purpose")
