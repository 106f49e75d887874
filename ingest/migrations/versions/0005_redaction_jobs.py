"""redaction jobs

Revision ID: 0005_redaction
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import storage.db

revision = "0005_redaction"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "redaction_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("source_item_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("based_on_job_id", sa.String(length=36), nullable=True),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("frames_done", sa.Integer(), nullable=False),
        sa.Column("frames_total", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result_item_id", sa.String(length=36), nullable=True),
        sa.Column("record_item_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", storage.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", storage.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["source_item_id"],
            ["evidence_items.id"],
            name=op.f("fk_redaction_jobs_source_item_id_evidence_items"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_redaction_jobs")),
        sa.UniqueConstraint("source_item_id", "version", name="uq_redaction_jobs_source_version"),
    )
    op.create_index("ix_redaction_jobs_claim", "redaction_jobs", ["status", "lease_until", "created_at"])
    op.create_index(op.f("ix_redaction_jobs_source_item_id"), "redaction_jobs", ["source_item_id"])


def downgrade() -> None:
    op.drop_table("redaction_jobs")
