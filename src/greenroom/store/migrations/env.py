"""Alembic environment: the metadata of every table, online migrations only."""

from __future__ import annotations

from alembic import context

import greenroom.audit.models
import greenroom.auth.models
import greenroom.deployments.models
import greenroom.migrations.models
import greenroom.registry.models
import greenroom.serving.models
import greenroom.tasks.models
import greenroom.workloads.models  # noqa: F401 - registers the tables
from greenroom.store.db import Base, make_engine

config = context.config


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
