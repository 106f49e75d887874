"""subject access requests: a person filmed asks for their footage, answered within a calendar month

Revision ID: 0018_subject_access_requests
Revises: 0017_link_purpose
"""

import sqlalchemy as sa
from alembic import op

import storage.db

revision = "0018_subject_access_requests"
down_revision = "0017_link_purpose"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_access_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("incident_id", sa.String(length=36), nullable=False),
        sa.Column("requester", sa.String(length=200), nullable=False),
        sa.Column("contact", sa.String(length=500), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("received_on", sa.Date(), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("export_id", sa.String(length=36), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_by", sa.String(length=128), nullable=True),
        sa.Column("closed_at", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_subject_access_requests_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_access_requests")),
    )
    with op.batch_alter_table("subject_access_requests") as batch:
        batch.create_index("ix_subject_access_requests_incident_id", ["incident_id"], unique=True)
        batch.create_index("ix_subject_access_requests_status_due", ["status", "due_on"])


def downgrade() -> None:
    op.drop_table("subject_access_requests")
