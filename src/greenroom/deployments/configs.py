"""Deployment configs: the versioned serving settings of a model, per `workspace/name`; every
change is a new version, one row each. Lists show the latest version of each name, picked in
SQL (greenroom.pagination).

Plain functions, keyword-only arguments led by `db_session`; they flush where a constraint must be
checked and never commit (the caller's session scope does). What they need of other domains comes
in as plain values: the registered embedding model a config serves (`model`, found by the
caller through the registry service; None when not registered) and the revisions that are live
(`live_revision_ids`).

Stored executor configs hold every key with its value, defaults included, except `threads` when
nobody set it: absent means "the machine's cores", resolved where the revision runs (so a config
written on one machine does not pin another's thread count). `ServingSettings.model_validate(
{**config.executor_config, "engine": config.engine})` gives the complete settings.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from greenroom.config import ALLOWED_ENV_NAMES, Settings
from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.deployments.schemas import DeploymentConfigUpdate, RegisteredModel
from greenroom.deployments.states import DeploymentStatus
from greenroom.errors import ConflictError, InvalidRequestError, NotFoundError
from greenroom.pagination import Page, filtered, latest_versions, paginate
from greenroom.schemas import OVERRIDE_KEYS, ServingSettings, env_problem

DEFAULT_WORKSPACE = "default"
DEFAULT_ENGINE = "onnx"
KEEP: Any = object()  # an argument left as it is
CONFIG_SORT_FIELDS = ("name", "created_at", "updated_at", "entity_version", "project", "engine")
CONFIG_FILTERS = ("name", "project", "model_name")


class RefusedConfigError(InvalidRequestError):
    """A well-formed config that this server will not run (a runtime it does not enable, a
    variable off the allow-list): 422, like every field the schemas refuse."""

    status_code = 422


@dataclass(frozen=True)
class ConfigPolicy:
    """What a config may name on this server: the runtime targets it enables (its default and
    `GREENROOM_EXTRA_RUNTIMES`) and the `additional_envs` names it allows (greenroom.schemas
    and `GREENROOM_EXTRA_ENV_NAMES`). The default, for internal callers that write only default
    settings, names no runtime and allows only the built-in variables."""

    enabled_runtimes: frozenset[str] = frozenset()
    allowed_env_names: frozenset[str] = ALLOWED_ENV_NAMES

    @classmethod
    def of(cls, settings: Settings) -> ConfigPolicy:
        return cls(settings.enabled_runtimes(), settings.allowed_env_names())

    def problem(self, executor_config: Mapping[str, Any]) -> str | None:
        """Why these executor settings may not run here (one sentence), or None."""
        runtime = executor_config.get("runtime")
        if runtime is not None and runtime not in self.enabled_runtimes:
            enabled = ", ".join(sorted(self.enabled_runtimes)) or "none"
            return (
                f"The runtime '{runtime}' is not enabled on this server (enabled: {enabled}); "
                "leave runtime unset, or ask the operator to add it to GREENROOM_EXTRA_RUNTIMES."
            )
        for name, value in (executor_config.get("additional_envs") or {}).items():
            if problem := env_problem(name, value, self.allowed_env_names):
                return problem
        return None

    def check(self, executor_config: Mapping[str, Any]) -> None:
        if problem := self.problem(executor_config):
            raise RefusedConfigError(problem)


DEFAULT_POLICY = ConfigPolicy()


# ----- configs ------------------------------------------------------------------------------------


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


def get_config_or_raise(
    db_session: Session, *, workspace: str, name: str, version: int
) -> DeploymentConfig:
    config = get_config(db_session, workspace=workspace, name=name, version=version)
    if config is None:
        raise NotFoundError(f"Deployment config '{workspace}/{name}' version {version} not found")
    return config


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
    model: RegisteredModel | None,
    engine: str = DEFAULT_ENGINE,
    executor_config: dict[str, Any] | None = None,
    project: str | None = None,
    description: str | None = None,
    model_revision: str | None = None,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """Version 1 of a config for a registered embedding model (`model`, the registered model
    named `model_name`, or None: 400); `model_revision` is filled in with the model's content
    hash (a caller that names another hash is refused)."""
    if get_latest_config(db_session, workspace=workspace, name=name) is not None:
        raise ConflictError(f"Deployment config '{workspace}/{name}' already exists")
    model = require_model(model, model_name=model_name, model_revision=model_revision)
    engine, executor_config = validate_settings(
        engine=engine, executor_config=executor_config or {}, policy=policy
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
    _flush_or_conflict(db_session, f"Deployment config '{workspace}/{name}' already exists")
    return config


def create_config_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    overrides: dict[str, Any],
    model: RegisteredModel | None,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """A new version: the latest with flat `overrides` applied (a null value resets a key to its
    default) and `model_revision` brought up to the current content hash of `model` (the
    registered model the latest names; None: the latest's is kept)."""
    latest = get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    engine, executor_config = apply_overrides(latest, overrides, policy=policy)
    return _add_version(
        db_session,
        latest,
        engine=engine,
        executor_config=executor_config,
        model_revision=_current_hash(latest, model),
    )


def ensure_config_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    overrides: dict[str, Any],
    model: RegisteredModel | None,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """The config a deploy with these overrides uses: the latest version when they change
    nothing, else a new version (`create_config_version`). Either way it must pass `policy`:
    a config written before the operator narrowed it is not deployed either. `model`: as for
    `create_config_version`."""
    latest = get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    engine, executor_config = apply_overrides(latest, overrides, policy=policy)
    if engine == latest.engine and executor_config == latest.executor_config:
        return latest
    return _add_version(
        db_session,
        latest,
        engine=engine,
        executor_config=executor_config,
        model_revision=_current_hash(latest, model),
    )


def update_config(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    config_in: DeploymentConfigUpdate,
    model: RegisteredModel | None,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """A new version (the deployments API): the latest with the fields given applied. Executor
    keys merge like the Tasks API's overrides (left out: kept; null: the default); a model spec
    names another registered model or keeps the latest's, and `model_revision` is brought up to
    that model's content hash. `model`: the registered model named `model_name_after(latest,
    config_in)`, or None (400)."""
    latest = get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    given = config_in.model_fields_set
    overrides = (
        config_in.executor_config.model_dump(mode="json", exclude_unset=True)
        if config_in.executor_config is not None
        else {}
    )
    if "engine" in given:
        overrides["engine"] = config_in.engine
    engine, executor_config = merge_settings(latest, overrides, policy=policy)
    spec = config_in.model_spec
    model = require_model(
        model,
        model_name=model_name_after(latest, config_in),
        model_revision=spec.model_revision if spec else None,
    )
    try:
        return _add_version(
            db_session,
            latest,
            engine=engine,
            executor_config=executor_config,
            model_name=model.id,
            model_revision=model.content_hash,
            project=config_in.project if "project" in given else KEEP,
            description=config_in.description if "description" in given else KEEP,
        )
    except IntegrityError as exc:
        raise ConflictError(f"Deployment config '{workspace}/{name}' changed concurrently") from exc


def apply_overrides(
    config: DeploymentConfig, overrides: dict[str, Any], *, policy: ConfigPolicy = DEFAULT_POLICY
) -> tuple[str, dict[str, Any]]:
    """The engine and executor config that `config` becomes with the Tasks API's flat
    `overrides`, validated."""
    unknown = sorted(set(overrides) - OVERRIDE_KEYS)
    if unknown:
        raise InvalidRequestError(
            f"Unknown deployment config key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(OVERRIDE_KEYS))}"
        )
    return merge_settings(config, overrides, policy=policy)


def merge_settings(
    config: DeploymentConfig, overrides: dict[str, Any], *, policy: ConfigPolicy = DEFAULT_POLICY
) -> tuple[str, dict[str, Any]]:
    """`config`'s engine and executor config with `overrides` applied (a null value resets a
    key to its default), validated."""
    engine = config.engine
    executor_config = dict(config.executor_config)
    for key, value in overrides.items():
        if key == "engine":
            engine = value if value is not None else DEFAULT_ENGINE
        elif value is None:
            executor_config.pop(key, None)
        else:
            executor_config[key] = value
    return validate_settings(engine=engine, executor_config=executor_config, policy=policy)


def delete_config(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    live_revision_ids: Collection[str],
    version: int | None = None,
) -> None:
    """Delete every version of a config, or one; refused (409) while a deployment that is not
    DELETED uses it (its latest version, or its live one: `live_revision_ids` are the revisions
    live under any served name)."""
    if version is None:
        get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    else:
        get_config_or_raise(db_session, workspace=workspace, name=name, version=version)
    refuse_deleting_a_used_config(
        db_session,
        workspace=workspace,
        name=name,
        version=version,
        live_revision_ids=live_revision_ids,
    )
    query = delete(DeploymentConfig).where(
        DeploymentConfig.workspace == workspace, DeploymentConfig.name == name
    )
    if version is not None:
        query = query.where(DeploymentConfig.entity_version == version)
    db_session.execute(query.execution_options(synchronize_session="fetch"))


def refuse_deleting_a_used_config(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    version: int | None,
    live_revision_ids: Collection[str],
) -> None:
    """A config (version) stays while a deployment that is not DELETED uses it: the latest
    version of a deployment, or the version that is live, names it."""
    live_versions = select(Deployment).where(Deployment.revision_id.in_(sorted(live_revision_ids)))
    for versions in (latest_versions(Deployment, workspace=workspace), live_versions):
        query = versions.where(
            Deployment.workspace == workspace,
            Deployment.config == name,
            Deployment.status != DeploymentStatus.DELETED,
        )
        if version is not None:
            query = query.where(Deployment.config_version == version)
        user = db_session.scalars(query.order_by(Deployment.name).limit(1)).first()
        if user is not None:
            what = f"'{workspace}/{name}'" + (f" version {version}" if version else "")
            raise ConflictError(
                f"Deployment config {what} is used by deployment '{workspace}/{user.name}' "
                f"({user.status}); delete the deployment first"
            )


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
    *, engine: str, executor_config: dict[str, Any], policy: ConfigPolicy = DEFAULT_POLICY
) -> tuple[str, dict[str, Any]]:
    """Check an engine and executor config against ServingSettings (400) and what this server
    lets a config name (`policy`, 422); the stored form back. Every config written by a caller
    passes here."""
    try:
        settings = ServingSettings.model_validate({**executor_config, "engine": engine})
    except ValidationError as exc:
        raise InvalidRequestError(f"Invalid deployment config: {_describe(exc)}") from exc
    policy.check(executor_config)
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
    model_name: str | None = None,
    project: Any = KEEP,
    description: Any = KEEP,
) -> DeploymentConfig:
    """The next version after `latest`; what is not given is the latest's."""
    model_name = model_name or latest.model_name
    model_revision = model_revision or latest.model_revision
    config = DeploymentConfig(
        id=latest.id,
        workspace=latest.workspace,
        name=latest.name,
        entity_version=latest.entity_version + 1,
        project=latest.project if project is KEEP else project,
        description=latest.description if description is KEEP else description,
        engine=engine,
        model_name=model_name,
        model_revision=model_revision,
        executor_config=executor_config,
    )
    db_session.add(config)
    db_session.flush()
    return config


def require_model(
    model: RegisteredModel | None, *, model_name: str, model_revision: str | None = None
) -> RegisteredModel:
    """The registered model a config names (400 when `model` is None: not registered); a pinned
    revision must match its content hash."""
    if model is None:
        raise InvalidRequestError(f"Embedding model '{model_name}' is not registered")
    if model_revision is not None and model_revision != model.content_hash:
        raise InvalidRequestError(
            f"Embedding model '{model_name}' has content hash {model.content_hash}, "
            f"not {model_revision}"
        )
    return model


def model_name_after(latest: DeploymentConfig, config_in: DeploymentConfigUpdate) -> str:
    """The embedding model a new config version serves: the one its spec names, else the
    latest's."""
    spec = config_in.model_spec
    return (spec.model_name if spec else None) or latest.model_name


def _current_hash(latest: DeploymentConfig, model: RegisteredModel | None) -> str | None:
    """The content hash a new version of `latest` names: its model's current one (None when
    the model is not registered: the latest's is kept)."""
    return model.content_hash if model is not None else latest.model_revision


def _flush_or_conflict(db_session: Session, message: str) -> None:
    """Flush; a unique version written concurrently by another request is a conflict (409)."""
    try:
        db_session.flush()
    except IntegrityError as exc:
        raise ConflictError(message) from exc


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


def resolve_config(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    version: int | None,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """The config version a deployment version will run: the latest unless one is named; 400
    when it does not exist or holds values out of today's bounds, 422 when it names what
    `policy` does not allow (a config written before the bounds or the operator narrowed)."""
    if version is None:
        config = get_latest_config(db_session, workspace=workspace, name=name)
    else:
        config = get_config(db_session, workspace=workspace, name=name, version=version)
    if config is not None:
        validate_settings(
            engine=config.engine, executor_config=config.executor_config, policy=policy
        )
        return config
    if version is not None and get_latest_config(db_session, workspace=workspace, name=name):
        raise InvalidRequestError(
            f"Deployment config '{workspace}/{name}' version {version} does not exist"
        )
    raise InvalidRequestError(f"Deployment config '{workspace}/{name}' does not exist")


# ----- lists: the latest version of each config, a page at a time -------------------------------


def list_configs(
    db_session: Session,
    *,
    workspace: str,
    page: int = 1,
    page_size: int = 100,
    sort: str = "created_at",
    filters: dict[str, str] | None = None,
) -> Page[DeploymentConfig]:
    """A page of the latest version of each config in a workspace."""
    query = latest_versions(DeploymentConfig, workspace=workspace)
    query = filtered(query, DeploymentConfig, filters or {}, CONFIG_FILTERS)
    return paginate(
        db_session,
        query,
        model=DeploymentConfig,
        page=page,
        page_size=page_size,
        sort=sort,
        sort_fields=CONFIG_SORT_FIELDS,
    )
