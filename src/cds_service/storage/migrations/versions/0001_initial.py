"""Audit and feedback tables.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("hook", sa.String(100), nullable=False),
        sa.Column("hook_instance", sa.String(100), nullable=False),
        sa.Column("patient_id", sa.String(200), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(50), nullable=False),
        sa.Column("card_ids", sa.JSON, nullable=False),
        sa.Column("suggestion_ids", sa.JSON, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_record_service", "audit_record", ["service"])
    op.create_index("ix_audit_record_hook_instance", "audit_record", ["hook_instance"])
    op.create_table(
        "feedback_record",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("card_id", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("outcome_timestamp", sa.String(40), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON, nullable=False),
        sa.Column("override_reason", sa.JSON, nullable=True),
        sa.Column("known_card", sa.Boolean, nullable=False),
        sa.UniqueConstraint("service", "card_id", "outcome", "outcome_timestamp", name="uq_feedback"),
    )
    op.create_index("ix_feedback_record_service", "feedback_record", ["service"])
    op.create_index("ix_feedback_record_card_id", "feedback_record", ["card_id"])


def downgrade() -> None:
    op.drop_table("feedback_record")
    op.drop_table("audit_record")
