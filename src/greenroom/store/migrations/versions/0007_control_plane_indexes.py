"""control plane at scale: tasks (embedding_model_id, status, created_at) for the claim's
per-name tests; deployments.id for the workloads API's look-ups by workload id

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-16 09:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.create_index(
            "ix_tasks_model_status_created",
            ["embedding_model_id", "status", "created_at"],
            unique=False,
        )
    with op.batch_alter_table("deployments") as batch:
        batch.create_index(batch.f("ix_deployments_id"), ["id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_index(batch.f("ix_deployments_id"))
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_model_status_created")
