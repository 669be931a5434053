"""traffic history: the traffic_summaries table (one row per router and 10-s bucket)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-15 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import greenroom.store.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = greenroom.store.db.UTCDateTime(timezone=True)
    op.create_table(
        "traffic_summaries",
        sa.Column("router_id", sa.String(length=64), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("series", sa.JSON(), nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("router_id", "bucket_start", name=op.f("pk_traffic_summaries")),
    )
    with op.batch_alter_table("traffic_summaries") as batch:
        batch.create_index(
            batch.f("ix_traffic_summaries_bucket_start"), ["bucket_start"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("traffic_summaries") as batch:
        batch.drop_index(batch.f("ix_traffic_summaries_bucket_start"))
    op.drop_table("traffic_summaries")
