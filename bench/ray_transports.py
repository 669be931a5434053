"""The two transports to a Ray Serve replica that the router does not use, kept for measuring.

The router reaches a Serve replica over the replica protocol (`greenroom.runtime.ray_replica`).
`bench/ray_transport.py` compares that with Serve's own paths, which live here, out of `src/`:

- the Serve deployment handle: `ServeHandleClient` → `TransportReplica.embed`;
- Serve's HTTP proxy (runs only with `GREENROOM_RAY_HTTP_PORT`, on loopback): `POST
  /greenroom-<revision>` → `TransportReplica.__call__`.

Deploy them with `RayRuntime(settings, replica_class=TransportReplica)`. This module is pickled
by value into the Ray workers (they cannot import `bench/`).
"""

from __future__ import annotations

import asyncio
import hmac
import sys
from typing import Any

import numpy as np
from ray import cloudpickle

from greenroom.runtime import protocol
from greenroom.runtime.ray import app_name
from greenroom.runtime.ray_replica import GreenroomReplica


class TransportReplica(GreenroomReplica):
    """A Serve replica that also answers Serve's handle (`embed`) and HTTP proxy (`__call__`)."""

    def __init__(
        self, spec_json: bytes, cache_dir: str, bind_host: str, report_host: str, secret: str
    ) -> None:
        super().__init__(spec_json, cache_dir, bind_host, report_host, secret)
        self._secret = secret

    async def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        """The Serve-handle transport (callers hold Ray's token); shares the engine thread with
        the protocol server and its limits."""
        lengths = np.asarray(lengths, dtype=np.int64)
        flat_ids = np.asarray(flat_ids, dtype=np.int64)
        protocol.check_batch(lengths, flat_ids, self.server.limits)
        loop = asyncio.get_running_loop()
        engine_thread = self.server.executor
        return await loop.run_in_executor(engine_thread, self.engine.embed, lengths, flat_ids)

    async def __call__(self, request: Any) -> Any:
        """Serve's HTTP proxy transport: `Authorization: Bearer <the revision's secret>` and an
        EMBED request payload of the replica protocol in, raw little-endian float32 vectors
        out."""
        from starlette.responses import Response

        given = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), self._secret.encode()):
            return Response(status_code=401)
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > self.server.limits.max_request_bytes:
            return Response(status_code=413)
        try:
            lengths, flat_ids = protocol.decode_embed(await request.body(), self.server.limits)
        except protocol.RefusedRequest as exc:
            return Response(str(exc), status_code=400)
        vectors = await self.embed(lengths, flat_ids)
        return Response(
            vectors.astype("<f4", copy=False).tobytes(),
            media_type="application/octet-stream",
            headers={"x-dimension": str(vectors.shape[1])},
        )


class ServeHandleClient:
    """`ReplicaClient`'s interface over a Serve deployment handle (Serve picks the replica)."""

    def __init__(self, revision_id: str) -> None:
        from ray import serve

        self.handle = serve.get_app_handle(app_name(revision_id))

    async def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        return await self.handle.embed.remote(lengths, flat_ids)

    async def close(self) -> None:
        return None


cloudpickle.register_pickle_by_value(sys.modules[__name__])
