"""exhibit references: each evidence item's reference in an incident, given once, never reused

Revision ID: 0020_exhibit_references
Revises: 0019_shared_sign_in_throttle
"""

import sqlalchemy as sa
from alembic import op

import storage.db

revision = "0020_exhibit_references"
down_revision = "0019_shared_sign_in_throttle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exhibit_references",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.String(length=36), nullable=False),
        sa.Column("item_id", sa.String(length=36), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("series", sa.String(length=16), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("producer_kind", sa.String(length=16), nullable=False),
        sa.Column("producer_id", sa.String(length=128), nullable=False),
        sa.Column("producer_name", sa.String(length=128), nullable=False),
        sa.Column("assigned_by", sa.String(length=128), nullable=False),
        sa.Column("assigned_at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_exhibit_references_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exhibit_references")),
    )
    op.create_index("ix_exhibit_references_incident_id", "exhibit_references", ["incident_id"])
    op.create_index("ix_exhibit_references_item_id", "exhibit_references", ["item_id"])
    op.create_index(
        "uq_exhibit_references_item", "exhibit_references", ["incident_id", "item_id"], unique=True
    )
    op.create_index(
        "uq_exhibit_references_reference", "exhibit_references", ["incident_id", "reference"], unique=True
    )
    op.create_index(
        "uq_exhibit_references_number", "exhibit_references", ["incident_id", "series", "number"], unique=True
    )


def downgrade() -> None:
    op.drop_table("exhibit_references")
