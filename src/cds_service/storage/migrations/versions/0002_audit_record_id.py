"""Audit records get their own id, so that a record written twice (replayed from the local spool after the
database came back, while the first attempt had in fact landed) is stored once.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("audit_record") as batch:
        batch.add_column(sa.Column("record_id", sa.String(36), nullable=True))
        batch.create_index("ix_audit_record_record_id", ["record_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("audit_record") as batch:
        batch.drop_index("ix_audit_record_record_id")
        batch.drop_column("record_id")
