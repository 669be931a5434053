"""embedding migrations: the migrations, migration_samples, shadow_summaries and adapters
tables; revisions.priority; router_reports.pinned

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import greenroom.store.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = greenroom.store.db.UTCDateTime(timezone=True)
    op.create_table(
        "migrations",
        sa.Column("served_name", sa.String(length=511), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("staged_revision_id", sa.String(length=36), nullable=True),
        sa.Column("old_revision_id", sa.String(length=36), nullable=True),
        sa.Column("shadow_fraction", sa.Float(), nullable=False),
        sa.Column("stage_updated_at", utc, nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("served_name", name=op.f("pk_migrations")),
    )
    op.create_table(
        "migration_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("served_name", sa.String(length=511), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migration_samples")),
    )
    with op.batch_alter_table("migration_samples") as batch:
        batch.create_index(
            batch.f("ix_migration_samples_served_name"), ["served_name"], unique=False
        )
    op.create_table(
        "shadow_summaries",
        sa.Column("served_name", sa.String(length=511), nullable=False),
        sa.Column("router_id", sa.String(length=64), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("served_name", "router_id", name=op.f("pk_shadow_summaries")),
    )
    op.create_table(
        "adapters",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("served_name", sa.String(length=511), nullable=False),
        sa.Column("revision_id", sa.String(length=36), nullable=False),
        sa.Column("target_revision_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("parameters", sa.LargeBinary(), nullable=False),
        sa.Column("evaluation", sa.JSON(), nullable=False),
        sa.Column("target_embedding_space", sa.String(length=300), nullable=False),
        sa.Column("target_normalize", sa.Boolean(), nullable=False),
        sa.Column("fitted_at", utc, nullable=False),
        sa.Column("retired_at", utc, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
    )
    with op.batch_alter_table("adapters") as batch:
        batch.create_index(batch.f("ix_adapters_served_name"), ["served_name"], unique=False)
    with op.batch_alter_table("revisions") as batch:
        batch.add_column(
            sa.Column("priority", sa.String(length=8), nullable=False, server_default="normal")
        )
    # Router reports are rewritten every heartbeat: the ones there get an empty map, then the
    # column is NOT NULL without a server default, as the model declares it.
    with op.batch_alter_table("router_reports") as batch:
        batch.add_column(sa.Column("pinned", sa.JSON(), nullable=True))
    reports = sa.table("router_reports", sa.column("pinned", sa.JSON()))
    op.get_bind().execute(reports.update().values(pinned={}))
    with op.batch_alter_table("router_reports") as batch:
        batch.alter_column("pinned", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("router_reports") as batch:
        batch.drop_column("pinned")
    with op.batch_alter_table("revisions") as batch:
        batch.drop_column("priority")
    with op.batch_alter_table("adapters") as batch:
        batch.drop_index(batch.f("ix_adapters_served_name"))
    op.drop_table("adapters")
    op.drop_table("shadow_summaries")
    with op.batch_alter_table("migration_samples") as batch:
        batch.drop_index(batch.f("ix_migration_samples_served_name"))
    op.drop_table("migration_samples")
    op.drop_table("migrations")
