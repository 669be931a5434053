"""The runtime backends of one process, one per runtime target (`local`, `ray`).

A revision runs on the backend its runtime target names: the server's default, or the one a
deployment config asks for (`runtime: ray` on a local server). Backends other than the default
are created and opened on the first revision that needs them, so a local server pays nothing for
Ray until a config asks for it. Only enabled targets have a factory (`Settings.enabled_runtimes`):
a revision asking for another is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from greenroom.errors import InvalidRequestError
from greenroom.runtime.base import ReplicaStatus, RevisionSpec, RuntimeBackend

BackendFactory = Callable[[], RuntimeBackend]


class RuntimeTargets(RuntimeBackend):
    name = "targets"

    def __init__(
        self, default_target: str, default: RuntimeBackend, factories: Mapping[str, BackendFactory]
    ) -> None:
        super().__init__()
        self.default_target = default_target
        self.targets = {default_target, *factories}
        self._factories = dict(factories)
        self._backends: dict[str, RuntimeBackend] = {}
        self._adopt(default_target, default)

    def _adopt(self, target: str, backend: RuntimeBackend) -> None:
        self._backends[target] = backend
        backend.subscribe(self._notify)

    async def open(self) -> None:
        await self._backends[self.default_target].open()

    async def backend(self, target: str) -> RuntimeBackend:
        """The backend of a target, created and opened on first use."""
        if target not in self._backends:
            factory = self._factories.get(target)
            if factory is None:
                raise InvalidRequestError(
                    f"The runtime target '{target}' is not enabled on this server; an operator "
                    "enables it with GREENROOM_EXTRA_RUNTIMES."
                )
            backend = factory()
            await backend.open()
            self._adopt(target, backend)
        return self._backends[target]

    async def start_revision(self, spec: RevisionSpec) -> None:
        await (await self.backend(spec.runtime)).start_revision(spec)

    async def stop_revision(self, revision_id: str) -> None:
        for backend in self._backends.values():
            if revision_id in backend.revisions():
                await backend.stop_revision(revision_id)

    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        for backend in self._backends.values():
            if revision_id in backend.revisions():
                return backend.replicas(revision_id)
        return []

    def running(self) -> dict[str, RevisionSpec]:
        return {
            revision_id: spec
            for backend in self._backends.values()
            for revision_id, spec in backend.running().items()
        }

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
