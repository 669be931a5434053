"""The deployments API's schemas: each executor bound is written once and every model that
carries the setting has it; the shared name and text types."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from greenroom.deployments.schemas import ExecutorConfigUpdate
from greenroom.schemas import ConfigOverrides, ExecutorConfig, Name, shown_envs


def test_config_overrides_keep_executor_config_bounds() -> None:
    """ConfigOverrides repeats ExecutorConfig's bounds; this keeps the two equal."""
    for name, field in ConfigOverrides.model_fields.items():
        if name == "engine":
            continue
        assert field.metadata == ExecutorConfig.model_fields[name].metadata, name


def test_executor_config_update_keeps_executor_config_bounds() -> None:
    for name, field in ExecutorConfigUpdate.model_fields.items():
        assert field.metadata == ExecutorConfig.model_fields[name].metadata, name


@pytest.mark.parametrize(
    ("field", "too_big"),
    [
        ("gpu", 17),
        ("replicas", 65),
        ("max_batch_size", 2049),
        ("max_batch_tokens", 1_048_577),
        ("max_queue", 65_537),
        ("threads", 257),
    ],
)
def test_executor_settings_have_upper_bounds(field: str, too_big: int) -> None:
    """Issue 9 item 12: `max_queue: 10^30` and the like are refused by every model."""
    for model in (ExecutorConfig, ExecutorConfigUpdate, ConfigOverrides):
        if field not in model.model_fields:
            continue
        with pytest.raises(ValidationError, match="less than or equal"):
            model.model_validate({field: too_big})
        model.model_validate({field: too_big - 1})
    with pytest.raises(ValidationError):
        ExecutorConfig.model_validate({field: 10**30})


class Named(BaseModel):
    name: Name


@pytest.mark.parametrize("name", ["a", "a.b", "...", "x_y-z", ".a"])
def test_a_name_is_ascii_and_not_a_path_part(name: str) -> None:
    assert Named(name=name).name == name


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "é", "a b"])
def test_a_name_refuses_dots_paths_and_other_characters(name: str) -> None:
    with pytest.raises(ValidationError):
        Named(name=name)


def test_shown_envs_masks_values_without_the_deploy_scope() -> None:
    envs = {"OMP_NUM_THREADS": "2"}
    assert shown_envs(envs, reveal=True) == envs
    assert shown_envs(envs, reveal=False) == {"OMP_NUM_THREADS": "***"}
