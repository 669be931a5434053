"""The migration stage machine: every (from, to) pair against the table, the refusal
sentences, and `transition()` as the only writer of `Migration.stage`."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta
from pathlib import Path

import pytest

from greenroom.migrations.models import Migration
from greenroom.migrations.states import ALLOWED, MigrationStage, refusal, stage_of, transition
from greenroom.store.db import utcnow

S = MigrationStage
PAIRS = list(itertools.product(MigrationStage, MigrationStage))
LONG_AGO = utcnow() - timedelta(days=1)
SRC = Path(__file__).resolve().parents[2] / "src" / "greenroom"
EXPECTED = {
    (S.NONE, S.NONE): "repeat",
    (S.NONE, S.STAGED): "move",
    (S.NONE, S.ADAPTED): "refused",
    (S.STAGED, S.NONE): "move",
    (S.STAGED, S.STAGED): "move",  # a second staged deploy replaces the staged revision
    (S.STAGED, S.ADAPTED): "move",
    (S.ADAPTED, S.NONE): "move",
    (S.ADAPTED, S.STAGED): "refused",
    (S.ADAPTED, S.ADAPTED): "repeat",
}


def migration_in(stage: MigrationStage) -> Migration:
    return Migration(served_name="docs", stage=stage, stage_updated_at=LONG_AGO)


def test_the_table_is_the_contracts() -> None:
    assert {
        S.NONE: {S.STAGED},
        S.STAGED: {S.STAGED, S.NONE, S.ADAPTED},
        S.ADAPTED: {S.NONE},
    } == ALLOWED
    assert set(EXPECTED) == set(PAIRS)


@pytest.mark.parametrize(("current", "to"), PAIRS)
def test_every_pair(current: MigrationStage, to: MigrationStage) -> None:
    migration = migration_in(current)
    result = transition(migration, to, reason="a test")
    expected = EXPECTED[(current, to)]
    assert result.accepted == (expected != "refused")
    assert result.changed == (expected == "move")
    assert migration.stage == (to if result.accepted else current)
    moved = migration.stage_updated_at != LONG_AGO
    assert moved == (expected == "move")
    assert (result.reason != "") == (expected == "refused")
    assert (refusal(migration_in(current), to) is None) == (expected != "refused")


def test_refusals_say_what_to_do() -> None:
    assert transition(migration_in(S.NONE), S.ADAPTED).reason == (
        '`docs` has no staged revision: deploy with "strategy": "staged" first'
    )
    assert transition(migration_in(S.ADAPTED), S.STAGED).reason == (
        "`docs` is in a migration (adapted): finish or abort it first"
    )


def test_a_missing_or_unflushed_row_is_at_none() -> None:
    assert stage_of(None) == S.NONE
    assert stage_of(Migration(served_name="docs")) == S.NONE  # defaults apply at flush
    fresh = Migration(served_name="docs")
    assert transition(fresh, S.STAGED).changed and fresh.stage == S.STAGED


def test_transition_is_the_only_writer_of_stage() -> None:
    """No module that reaches migration rows but states.py assigns `.stage` (the initial
    `none` of a new row aside)."""
    writers = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if path.name == "states.py" or not re.search(r"migrations\.models|get_migration", text):
            continue
        for line in text.splitlines():
            if re.search(r"\.stage\s*=[^=]", line):
                writers.append(f"{path.relative_to(SRC)}: {line.strip()}")
    assert writers == []
