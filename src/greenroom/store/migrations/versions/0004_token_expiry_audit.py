"""tokens.expires_at, and the audit_events table

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import greenroom.store.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(
            sa.Column("expires_at", greenroom.store.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", greenroom.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("principal_id", sa.String(length=36), nullable=True),
        sa.Column("principal_name", sa.String(length=255), nullable=True),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("action", sa.String(length=1024), nullable=False),
        sa.Column("object", sa.JSON(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.create_index(batch.f("ix_audit_events_at"), ["at"], unique=False)
        batch.create_index(batch.f("ix_audit_events_principal_id"), ["principal_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_index(batch.f("ix_audit_events_principal_id"))
        batch.drop_index(batch.f("ix_audit_events_at"))
    op.drop_table("audit_events")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("expires_at")
