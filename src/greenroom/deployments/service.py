"""Deployment configs: versioned serving settings of a model. Every change is a new version.

Plain functions, keyword-only arguments led by `db_session`; they flush where a constraint must be
checked and never commit (the caller's session scope does).

Stored executor configs hold every key with its value, defaults included, except `threads` when
nobody set it: absent means "the machine's cores", resolved where the revision runs (so a config
written on one machine does not pin another's thread count). `ServingSettings.model_validate(
{**config.executor_config, "engine": config.engine})` gives the complete settings.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.deployments.schemas import OVERRIDE_KEYS, ServingSettings
from greenroom.errors import ConflictError, InvalidRequestError, NotFoundError
from greenroom.registry.models import EmbeddingModel

DEFAULT_WORKSPACE = "default"
DEFAULT_ENGINE = "onnx"


# ----- configs -----------------------------------------------------------------------------------


def get_config(
    db_session: Session, *, workspace: str, name: str, version: int
) -> DeploymentConfig | None:
    return db_session.scalars(
        select(DeploymentConfig).where(
            DeploymentConfig.workspace == workspace,
            DeploymentConfig.name == name,
            DeploymentConfig.entity_version == version,
        )
    ).first()


def get_latest_config(db_session: Session, *, workspace: str, name: str) -> DeploymentConfig | None:
    return db_session.scalars(
        select(DeploymentConfig)
        .where(DeploymentConfig.workspace == workspace, DeploymentConfig.name == name)
        .order_by(DeploymentConfig.entity_version.desc())
        .limit(1)
    ).first()


def get_latest_config_or_raise(
    db_session: Session, *, workspace: str, name: str
) -> DeploymentConfig:
    config = get_latest_config(db_session, workspace=workspace, name=name)
    if config is None:
        raise NotFoundError(f"Deployment config '{workspace}/{name}' not found")
    return config


def list_config_versions(
    db_session: Session, *, workspace: str, name: str
) -> list[DeploymentConfig]:
    """Every version of a config, newest first."""
    return list(
        db_session.scalars(
            select(DeploymentConfig)
            .where(DeploymentConfig.workspace == workspace, DeploymentConfig.name == name)
            .order_by(DeploymentConfig.entity_version.desc())
        )
    )


def create_config(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    model_name: str,
    engine: str = DEFAULT_ENGINE,
    executor_config: dict[str, Any] | None = None,
    project: str | None = None,
    description: str | None = None,
) -> DeploymentConfig:
    """Version 1 of a config for a registered embedding model; `model_revision` is filled in
    with the model's content hash."""
    if get_latest_config(db_session, workspace=workspace, name=name) is not None:
        raise ConflictError(f"Deployment config '{workspace}/{name}' already exists")
    model = db_session.get(EmbeddingModel, model_name)
    if model is None:
        raise InvalidRequestError(f"Embedding model '{model_name}' is not registered")
    engine, executor_config = validate_settings(
        engine=engine, executor_config=executor_config or {}
    )
    config = DeploymentConfig(
        workspace=workspace,
        name=name,
        entity_version=1,
        project=project,
        description=description,
        engine=engine,
        model_name=model_name,
        model_revision=model.content_hash,
        executor_config=executor_config,
    )
    db_session.add(config)
    db_session.flush()
    return config


def create_config_version(
    db_session: Session, *, workspace: str, name: str, overrides: dict[str, Any]
) -> DeploymentConfig:
    """A new version: the latest with flat `overrides` applied (a null value resets a key to its
    default) and `model_revision` brought up to the model's current content hash."""
    latest = get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    engine, executor_config = apply_overrides(latest, overrides)
    return _add_version(db_session, latest, engine=engine, executor_config=executor_config)


def ensure_config_version(
    db_session: Session, *, workspace: str, name: str, overrides: dict[str, Any]
) -> DeploymentConfig:
    """The config a deploy with these overrides uses: the latest version when they change
    nothing, else a new version (`create_config_version`)."""
    latest = get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    engine, executor_config = apply_overrides(latest, overrides)
    if engine == latest.engine and executor_config == latest.executor_config:
        return latest
    return _add_version(db_session, latest, engine=engine, executor_config=executor_config)


def apply_overrides(
    config: DeploymentConfig, overrides: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The engine and executor config that `config` becomes with `overrides`, validated."""
    unknown = sorted(set(overrides) - OVERRIDE_KEYS)
    if unknown:
        raise InvalidRequestError(
            f"Unknown deployment config key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(OVERRIDE_KEYS))}"
        )
    engine = config.engine
    executor_config = dict(config.executor_config)
    for key, value in overrides.items():
        if key == "engine":
            engine = value if value is not None else DEFAULT_ENGINE
        elif value is None:
            executor_config.pop(key, None)
        else:
            executor_config[key] = value
    return validate_settings(engine=engine, executor_config=executor_config)


def refresh_model_revision(
    db_session: Session, *, model_name: str, content_hash: str
) -> list[DeploymentConfig]:
    """New weights for a model: a new version of each config of it that names older weights."""
    refreshed = []
    for latest in _latest_configs_of_model(db_session, model_name=model_name):
        if latest.model_revision != content_hash:
            refreshed.append(
                _add_version(
                    db_session,
                    latest,
                    engine=latest.engine,
                    executor_config=latest.executor_config,
                    model_revision=content_hash,
                )
            )
    return refreshed


def delete_configs_of_model(db_session: Session, *, model_name: str) -> int:
    """Delete every version of each config whose latest version serves this model; how many
    configs went."""
    configs = _latest_configs_of_model(db_session, model_name=model_name)
    for config in configs:
        db_session.execute(
            delete(DeploymentConfig)
            .where(
                DeploymentConfig.workspace == config.workspace,
                DeploymentConfig.name == config.name,
            )
            .execution_options(synchronize_session="fetch")
        )
    return len(configs)


def validate_settings(
    *, engine: str, executor_config: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Check an engine and executor config against ServingSettings; the stored form back."""
    try:
        settings = ServingSettings.model_validate({**executor_config, "engine": engine})
    except ValidationError as exc:
        raise InvalidRequestError(f"Invalid deployment config: {_describe(exc)}") from exc
    stored = settings.model_dump(mode="json", exclude={"engine"})
    if "threads" not in settings.model_fields_set:
        stored.pop("threads")
    return settings.engine, stored


def serving_settings(config: DeploymentConfig) -> ServingSettings:
    """Everything a revision of this config needs, `threads` resolved on this machine."""
    return ServingSettings.model_validate({**config.executor_config, "engine": config.engine})


def _add_version(
    db_session: Session,
    latest: DeploymentConfig,
    *,
    engine: str,
    executor_config: dict[str, Any],
    model_revision: str | None = None,
) -> DeploymentConfig:
    if model_revision is None:
        model = db_session.get(EmbeddingModel, latest.model_name)
        model_revision = model.content_hash if model is not None else latest.model_revision
    config = DeploymentConfig(
        id=latest.id,
        workspace=latest.workspace,
        name=latest.name,
        entity_version=latest.entity_version + 1,
        project=latest.project,
        description=latest.description,
        engine=engine,
        model_name=latest.model_name,
        model_revision=model_revision,
        executor_config=executor_config,
    )
    db_session.add(config)
    db_session.flush()
    return config


def _latest_configs_of_model(db_session: Session, *, model_name: str) -> list[DeploymentConfig]:
    """The latest version of each config whose latest version serves this model."""
    names = db_session.execute(
        select(DeploymentConfig.workspace, DeploymentConfig.name)
        .where(DeploymentConfig.model_name == model_name)
        .distinct()
    ).all()
    latest = (
        get_latest_config(db_session, workspace=workspace, name=name) for workspace, name in names
    )
    return [config for config in latest if config is not None and config.model_name == model_name]


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors()
    )


# ----- deployments (read only, for the tasks API) ------------------------------------------------


def get_latest_deployment(db_session: Session, *, workspace: str, name: str) -> Deployment | None:
    """The latest version of a deployment, whatever its status."""
    return db_session.scalars(
        select(Deployment)
        .where(Deployment.workspace == workspace, Deployment.name == name)
        .order_by(Deployment.entity_version.desc())
        .limit(1)
    ).first()
