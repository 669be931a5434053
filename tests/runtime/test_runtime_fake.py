"""The runtime conformance suite against the in-process fake backend."""

from __future__ import annotations

import asyncio
import socket

from conformance import RuntimeConformance

from greenroom.runtime.base import ReplicaStatus, RuntimeBackend
from greenroom.runtime.fake import FakeRuntime


class TestFakeRuntimeConformance(RuntimeConformance):
    async def make_backend(self) -> RuntimeBackend:
        self.backend = FakeRuntime(auto_restart=True)
        return self.backend

    def crash_replica(self, replica: ReplicaStatus) -> None:
        asyncio.get_running_loop().create_task(self.backend.crash(replica.replica_id))

    def replica_gone(self, replica: ReplicaStatus) -> bool:
        assert replica.host is not None and replica.port is not None
        try:
            socket.create_connection((replica.host, replica.port), timeout=1).close()
        except OSError:
            return True
        return False
