"""Serve the default model when the server starts.

Until the control plane exists (tasks and the green rollout), `greenroom serve` brings the default
model up here: one revision with the deployment config's default values, made live once ready.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from greenroom.config import Settings
from greenroom.deployments.schemas import ServingSettings
from greenroom.errors import GreenroomError
from greenroom.registry.weights import content_hash, inspect_model, resolve_source
from greenroom.runtime.base import RevisionSpec, RuntimeBackend
from greenroom.serving.router import Router, ServedRevision

log = logging.getLogger("greenroom.startup")


@dataclass
class StartupState:
    """What start-up still waits for; `/readyz` answers 503 with the reason until done."""

    pending: str | None = None
    error: str | None = None

    def not_ready_reason(self) -> str | None:
        return self.error or self.pending


async def serve_model(
    *,
    runtime: RuntimeBackend,
    router: Router,
    served_name: str,
    source: str,
    serving: ServingSettings,
) -> ServedRevision:
    """Start a revision of the model, wait for a ready replica, make it live."""
    path = await asyncio.to_thread(resolve_source, source)
    info = await asyncio.to_thread(inspect_model, path)
    digest = await asyncio.to_thread(content_hash, path)
    revision = ServedRevision(
        revision_id=str(uuid.uuid4()),
        served_name=served_name,
        embedding_model_id=served_name,
        content_hash=digest,
        info=info,
        max_batch_size=serving.max_batch_size,
        max_batch_tokens=serving.max_batch_tokens,
        max_queue=serving.max_queue,
    )
    await runtime.start_revision(
        RevisionSpec(
            revision_id=revision.revision_id,
            model_path=path,
            content_hash=digest,
            engine=serving.engine,
            quantization=serving.quantization,
            replicas=serving.replicas,
            threads=serving.threads,
            gpu=serving.gpu,
            environment=serving.additional_envs,
        )
    )
    while not runtime.ready_replicas(revision.revision_id):
        await asyncio.sleep(0.1)
    router.add_revision(revision)
    router.set_live(served_name, revision.revision_id)
    return revision


async def serve_default_model(
    settings: Settings, runtime: RuntimeBackend, router: Router, state: StartupState
) -> None:
    name = settings.default_model_id
    state.pending = f"Starting the default model '{name}'."
    try:
        await serve_model(
            runtime=runtime,
            router=router,
            served_name=name,
            source=settings.default_model_source,
            serving=ServingSettings(),
        )
    except GreenroomError as exc:
        state.error = f"The default model '{name}' could not start: {exc.message}"
        log.error(state.error)
    else:
        log.info("default model '%s' is live", name)
    finally:
        state.pending = None
