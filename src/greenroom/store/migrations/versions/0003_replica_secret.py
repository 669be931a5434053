"""revisions.replica_secret: the secret that authenticates connections to a revision's replicas

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:50:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("revisions") as batch:
        batch.add_column(sa.Column("replica_secret", sa.String(length=64), nullable=True))
    revisions = sa.table("revisions", sa.column("id", sa.String), sa.column("replica_secret"))
    connection = op.get_bind()
    for (revision_id,) in connection.execute(sa.select(revisions.c.id)).all():
        connection.execute(
            revisions.update()
            .where(revisions.c.id == revision_id)
            .values(replica_secret=secrets.token_hex(32))
        )
    with op.batch_alter_table("revisions") as batch:
        batch.alter_column("replica_secret", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("revisions") as batch:
        batch.drop_column("replica_secret")
