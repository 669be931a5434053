"""Fixtures of the rollout tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def paths(tiny_model_dir: Path, tiny_model_2_dir: Path) -> tuple[Path, Path]:
    return tiny_model_dir, tiny_model_2_dir
