"""The indexes of Alembic 0007 (the control plane at scale, bench/control_plane.py): the
migration and the models agree, and the queries they serve use them."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from greenroom.store.db import Base, Store, utcnow
from greenroom.store.migrations import alembic_config, upgrade
from greenroom.tasks import leases

INDEXES = {
    "tasks": ("ix_tasks_model_status_created", ["embedding_model_id", "status", "created_at"]),
    "deployments": ("ix_deployments_id", ["id"]),
}


def test_migration_0007_matches_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert not [d for d in differences if any(name in str(d) for name, _ in INDEXES.values())]
    indexes = {
        table: {
            index["name"]: index["column_names"]
            for index in inspect(store.engine).get_indexes(table)
        }
        for table in INDEXES
    }
    for table, (name, columns) in INDEXES.items():
        assert indexes[table][name] == columns


def test_the_downgrade_drops_them_and_the_upgrade_brings_them_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'greenroom.db'}"
    upgrade(url)
    store = Store(url)
    try:
        command.downgrade(alembic_config(url), "0006")
        names = {i["name"] for table in INDEXES for i in inspect(store.engine).get_indexes(table)}
        assert not names & {name for name, _ in INDEXES.values()}
        upgrade(url)
        names = {i["name"] for table in INDEXES for i in inspect(store.engine).get_indexes(table)}
        assert {name for name, _ in INDEXES.values()} <= names
    finally:
        store.dispose()


def test_the_claims_per_name_tests_use_the_index(store: Store) -> None:
    """SQLite's plan of a claim's candidate reads a name's pending tasks through the index, not
    every pending task (at 500 pending tasks a claim took 20 ms more without it)."""
    if store.is_postgres:
        pytest.skip("PostgreSQL picks by its statistics; bench/control_plane.py --explain")
    candidate = leases._candidate(utcnow(), "w", lock=False)
    compiled = candidate.compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as connection:
        plan = [row[3] for row in connection.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))]
    assert any("older USING INDEX ix_tasks_model_status_created" in step for step in plan), plan
