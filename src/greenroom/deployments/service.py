"""Deployment configs and deployments: both versioned per `workspace/name`; every change is a
new version, one row each. Lists show the latest version of each name, picked in SQL.

Plain functions, keyword-only arguments led by `db_session`; they flush where a constraint must be
checked and never commit (the caller's session scope does).

Stored executor configs hold every key with its value, defaults included, except `threads` when
nobody set it: absent means "the machine's cores", resolved where the revision runs (so a config
written on one machine does not pin another's thread count). `ServingSettings.model_validate(
{**config.executor_config, "engine": config.engine})` gives the complete settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from sqlalchemy import Select, and_, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.deployments.models import Deployment, DeploymentConfig, served_name
from greenroom.deployments.schemas import (
    MAX_VERSION,
    OVERRIDE_KEYS,
    DeploymentConfigUpdate,
    DeploymentCreate,
    DeploymentStatusUpdate,
    DeploymentUpdate,
    ServingSettings,
)
from greenroom.deployments.states import DELETION_STATUSES, DeploymentStatus, set_status
from greenroom.errors import (
    ConflictError,
    InvalidRequestError,
    InvalidTransitionError,
    NotFoundError,
)
from greenroom.registry.models import EmbeddingModel
from greenroom.runtime.environment import ALLOWED_ENV_NAMES, env_problem
from greenroom.tasks.models import Task
from greenroom.tasks.states import TERMINAL_TASK_STATUSES
from greenroom.workloads.models import LiveRevision, Revision

DEFAULT_WORKSPACE = "default"
DEFAULT_ENGINE = "onnx"
Row = TypeVar("Row", DeploymentConfig, Deployment)
KEEP: Any = object()  # an argument left as it is


class RefusedConfigError(InvalidRequestError):
    """A well-formed config that this server will not run (a runtime it does not enable, a
    variable off the allow-list): 422, like every field the schemas refuse."""

    status_code = 422


@dataclass(frozen=True)
class ConfigPolicy:
    """What a config may name on this server: the runtime targets it enables (its default and
    `GREENROOM_EXTRA_RUNTIMES`) and the `additional_envs` names it allows (runtime/environment.py
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
    engine: str = DEFAULT_ENGINE,
    executor_config: dict[str, Any] | None = None,
    project: str | None = None,
    description: str | None = None,
    model_revision: str | None = None,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """Version 1 of a config for a registered embedding model; `model_revision` is filled in
    with the model's content hash (a caller that names another hash is refused)."""
    if get_latest_config(db_session, workspace=workspace, name=name) is not None:
        raise ConflictError(f"Deployment config '{workspace}/{name}' already exists")
    model = _registered_model(db_session, model_name=model_name, model_revision=model_revision)
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
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """A new version: the latest with flat `overrides` applied (a null value resets a key to its
    default) and `model_revision` brought up to the model's current content hash."""
    latest = get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    engine, executor_config = apply_overrides(latest, overrides, policy=policy)
    return _add_version(db_session, latest, engine=engine, executor_config=executor_config)


def ensure_config_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    overrides: dict[str, Any],
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """The config a deploy with these overrides uses: the latest version when they change
    nothing, else a new version (`create_config_version`). Either way it must pass `policy`:
    a config written before the operator narrowed it is not deployed either."""
    latest = get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    engine, executor_config = apply_overrides(latest, overrides, policy=policy)
    if engine == latest.engine and executor_config == latest.executor_config:
        return latest
    return _add_version(db_session, latest, engine=engine, executor_config=executor_config)


def update_config(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    config_in: DeploymentConfigUpdate,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """A new version (the deployments API): the latest with the fields given applied. Executor
    keys merge like the Tasks API's overrides (left out: kept; null: the default); a model spec
    names another registered model or keeps the latest's, and `model_revision` is brought up to
    that model's content hash."""
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
    model = _registered_model(
        db_session,
        model_name=(spec.model_name if spec else None) or latest.model_name,
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
    db_session: Session, *, workspace: str, name: str, version: int | None = None
) -> None:
    """Delete every version of a config, or one; refused (409) while a deployment that is not
    DELETED uses it (its latest version, or its live one)."""
    if version is None:
        get_latest_config_or_raise(db_session, workspace=workspace, name=name)
    else:
        get_config_or_raise(db_session, workspace=workspace, name=name, version=version)
    refuse_deleting_a_used_config(db_session, workspace=workspace, name=name, version=version)
    query = delete(DeploymentConfig).where(
        DeploymentConfig.workspace == workspace, DeploymentConfig.name == name
    )
    if version is not None:
        query = query.where(DeploymentConfig.entity_version == version)
    db_session.execute(query.execution_options(synchronize_session="fetch"))


def refuse_deleting_a_used_config(
    db_session: Session, *, workspace: str, name: str, version: int | None
) -> None:
    """A config (version) stays while a deployment that is not DELETED uses it: the latest
    version of a deployment, or the version that is live, names it."""
    live_versions = select(Deployment).join(
        LiveRevision, LiveRevision.revision_id == Deployment.revision_id
    )
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
    """The next version after `latest`; what is not given is the latest's (the model's current
    content hash for `model_revision`)."""
    model_name = model_name or latest.model_name
    if model_revision is None:
        model = db_session.get(EmbeddingModel, model_name)
        model_revision = model.content_hash if model is not None else latest.model_revision
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


def _registered_model(
    db_session: Session, *, model_name: str, model_revision: str | None = None
) -> EmbeddingModel:
    """The registered model a config names (400 otherwise); a pinned revision must match."""
    model = db_session.get(EmbeddingModel, model_name)
    if model is None:
        raise InvalidRequestError(f"Embedding model '{model_name}' is not registered")
    if model_revision is not None and model_revision != model.content_hash:
        raise InvalidRequestError(
            f"Embedding model '{model_name}' has content hash {model.content_hash}, "
            f"not {model_revision}"
        )
    return model


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


# ----- lists: the latest version of each name, a page at a time ----------------------------------

CONFIG_SORT_FIELDS = ("name", "created_at", "updated_at", "entity_version", "project", "engine")
CONFIG_FILTERS = ("name", "project", "model_name")
DEPLOYMENT_SORT_FIELDS = (
    "name",
    "created_at",
    "updated_at",
    "entity_version",
    "status",
    "config",
    "config_version",
    "project",
)
DEPLOYMENT_FILTERS = ("name", "status", "config", "project")


@dataclass(frozen=True)
class Page(Generic[Row]):
    items: list[Row]
    page: int
    page_size: int
    total: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total / self.page_size)


def parse_version(value: str) -> int:
    """A version number from a path or query string: 400 unless ASCII digits naming 1 to
    MAX_VERSION (`str.isdigit` alone lets `²` through to `int`, and a huge number would reach
    the database)."""
    shown = value if len(value) <= 40 else value[:40] + "…"
    digits = value.lstrip("0")
    if not (value.isascii() and value.isdigit()) or not digits:
        raise InvalidRequestError(f"Invalid version '{shown}': must be a positive integer")
    if len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        raise InvalidRequestError(f"Invalid version '{shown}': must be at most {MAX_VERSION}")
    return int(digits)


def latest_versions(model: type[Row], *, workspace: str) -> Select[tuple[Row]]:
    """The latest version of each name in a workspace, computed by the database: every row is
    joined to the greatest `entity_version` of its name (a grouped subquery)."""
    newest = (
        select(model.name, func.max(model.entity_version).label("entity_version"))
        .where(model.workspace == workspace)
        .group_by(model.name)
        .subquery("newest")
    )
    return (
        select(model)
        .join(
            newest,
            and_(model.name == newest.c.name, model.entity_version == newest.c.entity_version),
        )
        .where(model.workspace == workspace)
    )


def paginate(
    db_session: Session,
    query: Select[tuple[Row]],
    *,
    model: type[Row],
    page: int,
    page_size: int,
    sort: str,
    sort_fields: Iterable[str],
) -> Page[Row]:
    """One page of `query` ordered by `sort` (a field, `-` first for descending; ties in the
    order rows were written), with the total count; both in SQL."""
    field = sort.removeprefix("-")
    if field not in sort_fields:
        raise InvalidRequestError(f"Cannot sort by '{field}'; one of: {', '.join(sort_fields)}")
    descending = sort.startswith("-")
    column, tiebreak = getattr(model, field), model.pk
    order = (column.desc(), tiebreak.desc()) if descending else (column.asc(), tiebreak.asc())
    total = db_session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db_session.scalars(
        query.order_by(*order).offset((page - 1) * page_size).limit(page_size)
    )
    return Page(items=list(rows), page=page, page_size=page_size, total=total)


def _filtered(
    query: Select[tuple[Row]], model: type[Row], filters: dict[str, str], allowed: Iterable[str]
) -> Select[tuple[Row]]:
    for key, value in filters.items():
        if key not in allowed:
            raise InvalidRequestError(f"Cannot filter by '{key}'; one of: {', '.join(allowed)}")
        query = query.where(getattr(model, key) == value)
    return query


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
    query = _filtered(query, DeploymentConfig, filters or {}, CONFIG_FILTERS)
    return paginate(
        db_session,
        query,
        model=DeploymentConfig,
        page=page,
        page_size=page_size,
        sort=sort,
        sort_fields=CONFIG_SORT_FIELDS,
    )


def list_deployments(
    db_session: Session,
    *,
    workspace: str,
    page: int = 1,
    page_size: int = 100,
    sort: str = "created_at",
    filters: dict[str, str] | None = None,
    all_versions: bool = False,
) -> Page[Deployment]:
    """A page of deployments in a workspace: the latest version of each (filters apply to
    it), or every version with `all_versions`."""
    if all_versions:
        query = select(Deployment).where(Deployment.workspace == workspace)
    else:
        query = latest_versions(Deployment, workspace=workspace)
    query = _filtered(query, Deployment, filters or {}, DEPLOYMENT_FILTERS)
    return paginate(
        db_session,
        query,
        model=Deployment,
        page=page,
        page_size=page_size,
        sort=sort,
        sort_fields=DEPLOYMENT_SORT_FIELDS,
    )


# ----- deployments -------------------------------------------------------------------------------


def get_deployment(
    db_session: Session, *, workspace: str, name: str, version: int
) -> Deployment | None:
    return db_session.scalars(
        select(Deployment).where(
            Deployment.workspace == workspace,
            Deployment.name == name,
            Deployment.entity_version == version,
        )
    ).first()


def get_deployment_or_raise(
    db_session: Session, *, workspace: str, name: str, version: int
) -> Deployment:
    deployment = get_deployment(db_session, workspace=workspace, name=name, version=version)
    if deployment is None:
        raise NotFoundError(f"Deployment '{workspace}/{name}' version {version} not found")
    return deployment


def get_latest_deployment(db_session: Session, *, workspace: str, name: str) -> Deployment | None:
    """The latest version of a deployment, whatever its status."""
    return db_session.scalars(
        select(Deployment)
        .where(Deployment.workspace == workspace, Deployment.name == name)
        .order_by(Deployment.entity_version.desc())
        .limit(1)
    ).first()


def get_latest_deployment_or_raise(db_session: Session, *, workspace: str, name: str) -> Deployment:
    deployment = get_latest_deployment(db_session, workspace=workspace, name=name)
    if deployment is None:
        raise NotFoundError(f"Deployment '{workspace}/{name}' not found")
    return deployment


def list_deployment_versions(db_session: Session, *, workspace: str, name: str) -> list[Deployment]:
    """Every version of a deployment, newest first (none for an unknown name)."""
    return list(
        db_session.scalars(
            select(Deployment)
            .where(Deployment.workspace == workspace, Deployment.name == name)
            .order_by(Deployment.entity_version.desc())
        )
    )


def live_revisions(db_session: Session, *, served_names: Iterable[str]) -> dict[str, LiveRevision]:
    """The live-revision pointer of each of these served names that has one (one query)."""
    names = sorted(set(served_names))
    if not names:
        return {}
    rows = db_session.scalars(select(LiveRevision).where(LiveRevision.served_name.in_(names)))
    return {row.served_name: row for row in rows}


@dataclass(frozen=True)
class Caller:
    """Who asks: the principal's id (`auth_context.principal_id`) and name (a task's
    `initiated_by`, as the Tasks API records it)."""

    id: str
    name: str


def auth_context(caller: Caller) -> dict[str, Any]:
    """Who created a version, as stored (api/deployments.md `auth_context`)."""
    return {
        "principal_id": caller.id,
        "principal_email": None,
        "principal_groups": [],
        "principal_on_behalf_of": None,
        "principal_on_behalf_of_groups": [],
        "principal_on_behalf_of_email": None,
    }


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


def create_deployment(
    db_session: Session,
    *,
    workspace: str,
    deployment_in: DeploymentCreate,
    caller: Caller,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> Deployment:
    """Version 1 of a new deployment, CREATED (the caller queues its deploy task)."""
    name = deployment_in.name
    exists = f"Deployment with workspace '{workspace}' and name '{name}' already exists"
    if get_latest_deployment(db_session, workspace=workspace, name=name) is not None:
        raise ConflictError(exists)
    config = resolve_config(
        db_session,
        workspace=workspace,
        name=deployment_in.config,
        version=deployment_in.config_version,
        policy=policy,
    )
    deployment = Deployment(
        workspace=workspace,
        name=name,
        entity_version=1,
        project=deployment_in.project,
        config=config.name,
        config_version=config.entity_version,
        auth_context=auth_context(caller),
    )
    set_status(deployment, DeploymentStatus.CREATED, "Deployment created")
    deployment.created_at = deployment.updated_at  # the first history entry's time
    db_session.add(deployment)
    _flush_or_conflict(db_session, exists)
    return deployment


def create_deployment_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    deployment_in: DeploymentUpdate,
    caller: Caller,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> Deployment:
    """The next version of a deployment, PENDING (the caller queues its deploy task). Refused
    (409) while the deployment is being deleted: the delete would take the new version too."""
    latest = get_latest_deployment_or_raise(db_session, workspace=workspace, name=name)
    if latest.status == DeploymentStatus.DELETING:
        raise ConflictError(
            f"Deployment '{workspace}/{name}' is marked for deletion (DELETING); "
            "deploy a new version once it is DELETED"
        )
    config = resolve_config(
        db_session,
        workspace=workspace,
        name=deployment_in.config,
        version=deployment_in.config_version,
        policy=policy,
    )
    deployment = Deployment(
        id=latest.id,
        workspace=workspace,
        name=name,
        entity_version=latest.entity_version + 1,
        project=latest.project,
        config=config.name,
        config_version=config.entity_version,
        auth_context=auth_context(caller),
    )
    set_status(deployment, DeploymentStatus.PENDING, "Deployment update pending")
    deployment.created_at = deployment.updated_at  # the first history entry's time
    db_session.add(deployment)
    _flush_or_conflict(db_session, f"Deployment '{workspace}/{name}' changed concurrently")
    return deployment


def update_status(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    version: int | None,
    status_in: DeploymentStatusUpdate,
) -> Deployment:
    """A controller's status of a version (the latest unless one is named), through the same
    rules as every status change; 409 when they refuse it. A controller cannot report a version
    DELETING or DELETED while something of it runs or may soon (the store would then disagree
    with what runs, and a DELETE would remove the records of a revision that still serves):
    only a DELETE, whose delete task withdraws the replicas, gets it there."""
    if version is None:
        deployment = get_latest_deployment_or_raise(db_session, workspace=workspace, name=name)
    else:
        deployment = get_deployment_or_raise(
            db_session, workspace=workspace, name=name, version=version
        )
    to = DeploymentStatus(status_in.status)
    runs = to in DELETION_STATUSES and Activity.load(
        db_session, served=deployment.served_name
    ).may_run(db_session, deployment)
    change = set_status(deployment, to, status_in.status_message, runs=runs)
    if not change.accepted:
        raise InvalidTransitionError(change.reason)
    provider = status_in.model_provider_id
    if provider is not None and provider != deployment.model_provider_id:
        deployment.model_provider_id = provider
    db_session.flush()
    return deployment


# ----- deleting: DELETING while something of a version runs, DELETED once nothing does -----------


@dataclass(frozen=True)
class Deletion:
    """What a DELETE did. `removed`: every targeted version was DELETED, nothing of it runs any
    more, and its record is gone (204). Otherwise `deployment` is the targeted (or latest)
    version, now DELETING or DELETED (202), and `needs_delete_task` says the served name's
    delete task must be queued."""

    removed: bool
    deployment: Deployment | None = None
    needs_delete_task: bool = False


@dataclass(frozen=True)
class Activity:
    """What runs under a served name: its live pointer and its unfinished tasks."""

    served: str
    live: LiveRevision | None
    unfinished: list[Task]

    @classmethod
    def load(cls, db_session: Session, *, served: str) -> Activity:
        tasks = db_session.scalars(
            select(Task).where(
                Task.embedding_model_id == served,
                Task.status.not_in([status.value for status in TERMINAL_TASK_STATUSES]),
            )
        )
        return cls(served=served, live=db_session.get(LiveRevision, served), unfinished=list(tasks))

    @property
    def delete_task_unfinished(self) -> bool:
        return any(task.kind == "delete" for task in self.unfinished)

    def may_run(self, db_session: Session, deployment: Deployment) -> bool:
        """Whether something of this version runs or may soon: it is live, an unfinished task
        names its revision, or its revision has replicas wanted or reported."""
        revision_id = deployment.revision_id
        if self.live is not None and self.live.revision_id == revision_id:
            return True
        if any(_names_revision(task, revision_id) for task in self.unfinished):
            return True
        revision = db_session.get(Revision, revision_id)
        return revision is not None and _has_replicas(revision)

    def withdrawn(self, db_session: Session) -> bool:
        """Whether the runtime has withdrawn everything of the served name: no live pointer, no
        unfinished task, no revision of it with replicas wanted or reported."""
        if self.live is not None or self.unfinished:
            return False
        revisions = db_session.scalars(select(Revision).where(Revision.served_name == self.served))
        return not any(_has_replicas(revision) for revision in revisions)


def _has_replicas(revision: Revision) -> bool:
    return bool(revision.desired_replicas or revision.ready_replicas or revision.replicas)


def _names_revision(task: Task, revision_id: str) -> bool:
    metadata = task.task_metadata or {}
    return revision_id in (metadata.get("deployment_revision_id"), metadata.get("revision_id"))


def delete_deployment(
    db_session: Session, *, workspace: str, name: str, version: int | None = None
) -> Deletion:
    """DELETE of a deployment (every version) or of one version.

    First, versions left DELETING by an earlier delete whose task has ended and of which
    nothing runs become DELETED. Then: if every targeted version is DELETED and the runtime has
    withdrawn what they ran (for a whole deployment: everything of the served name), their
    records are removed (after that of every version, the name is free). While a delete task is
    under way nothing changes. Otherwise each targeted version that runs or may soon (and, for
    a whole deployment, its latest version unless it is DELETED with everything withdrawn)
    becomes DELETING and the served name's delete task is needed; any other becomes DELETED at
    once: nothing of it runs. So records never go while the runtime still serves them, even
    when a version says DELETED."""
    versions = list_deployment_versions(db_session, workspace=workspace, name=name)
    if version is None:
        if not versions:
            raise NotFoundError(f"Deployment '{workspace}/{name}' not found")
        targets = versions
    else:
        targets = [
            get_deployment_or_raise(db_session, workspace=workspace, name=name, version=version)
        ]
    activity = Activity.load(db_session, served=served_name(workspace, name))
    settle_deleted(db_session, versions=versions, activity=activity)
    whole = version is None
    withdrawn = activity.withdrawn(db_session)
    if all(target.status == DeploymentStatus.DELETED for target in targets):
        if withdrawn or not (whole or activity.may_run(db_session, targets[0])):
            for target in targets:
                db_session.delete(target)
            db_session.flush()
            return Deletion(removed=True)
        if activity.delete_task_unfinished:  # it withdraws the rest; a later DELETE removes
            return Deletion(removed=False, deployment=targets[0])
    deleting = False
    for target in targets:
        latest_of_whole = whole and target is versions[0]
        if (
            target.status == DeploymentStatus.DELETING
            or activity.may_run(db_session, target)
            or (latest_of_whole and not (target.status == DeploymentStatus.DELETED and withdrawn))
        ):
            set_status(target, DeploymentStatus.DELETING, "Deployment is being deleted")
            deleting = True
        elif target.status != DeploymentStatus.DELETED:
            set_status(target, DeploymentStatus.DELETED, "Deployment deleted")
    db_session.flush()
    return Deletion(
        removed=False,
        deployment=targets[0],
        needs_delete_task=deleting and not activity.delete_task_unfinished,
    )


def settle_deleted(db_session: Session, *, versions: list[Deployment], activity: Activity) -> None:
    """DELETING versions become DELETED once no task of the served name is unfinished and
    nothing of them runs."""
    if activity.unfinished:
        return
    for deployment in versions:
        if deployment.status == DeploymentStatus.DELETING and not activity.may_run(
            db_session, deployment
        ):
            set_status(deployment, DeploymentStatus.DELETED, "Deployment deleted")
