"""The replica wire protocol: length-prefixed binary frames over a loopback TCP connection.

Token ids go in and float32 vectors come out as raw little-endian arrays (no JSON lists), one
request outstanding per connection. Frames: `u32 length` then the payload.

Requests: `u8 op` then, for EMBED, `u32 n`, `n × u32 lengths`, `Σ lengths × i32 ids`.
Replies:  `u8 status` (0 ok, 1 error) then, for EMBED, `u32 n`, `u32 dim`, `n × dim × f32`;
          for INFO a JSON object; for an error a UTF-8 message.
"""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import orjson

from greenroom.errors import BackendError

OP_EMBED = 1
OP_HEALTH = 2  # the replica embeds its warm-up batch: a health check that really embeds
OP_INFO = 3
STATUS_OK = 0
STATUS_ERROR = 1

_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<BI")  # op/status, count
_EMBED_REPLY = struct.Struct("<BII")


class ReplicaConnectionError(BackendError):
    """The connection to a replica broke: the replica died or was stopped."""


class ReplicaReplyError(BackendError):
    """The replica answered with an error."""


def encode_embed(lengths: np.ndarray, flat_ids: np.ndarray) -> bytes:
    body = (
        _HEADER.pack(OP_EMBED, len(lengths))
        + lengths.astype("<u4", copy=False).tobytes()
        + flat_ids.astype("<i4", copy=False).tobytes()
    )
    return _U32.pack(len(body)) + body


def decode_embed(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    _, count = _HEADER.unpack_from(payload)
    offset = _HEADER.size
    lengths = np.frombuffer(payload, dtype="<u4", count=count, offset=offset).astype(np.int64)
    offset += 4 * count
    flat_ids = np.frombuffer(payload, dtype="<i4", offset=offset).astype(np.int64)
    if int(lengths.sum()) != len(flat_ids):
        raise ValueError("token count does not match the lengths")
    return lengths, flat_ids


def frame(payload: bytes) -> bytes:
    return _U32.pack(len(payload)) + payload


def ok_vectors(vectors: np.ndarray) -> bytes:
    count, dim = vectors.shape
    return frame(
        _EMBED_REPLY.pack(STATUS_OK, count, dim) + vectors.astype("<f4", copy=False).tobytes()
    )


def ok_json(value: object) -> bytes:
    return frame(bytes([STATUS_OK]) + orjson.dumps(value))


def error(message: str) -> bytes:
    return frame(bytes([STATUS_ERROR]) + message.encode())


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _U32.unpack(await reader.readexactly(4))
    return await reader.readexactly(length)


class ReplicaClient:
    """One connection to one replica; calls are serialised (one request outstanding)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        payload = await self._call(encode_embed(lengths, flat_ids))
        _, count, dim = _EMBED_REPLY.unpack_from(payload)
        return np.frombuffer(
            payload, dtype="<f4", count=count * dim, offset=_EMBED_REPLY.size
        ).reshape(count, dim)

    async def health(self) -> None:
        await self._call(frame(bytes([OP_HEALTH])))

    async def info(self) -> dict:
        payload = await self._call(frame(bytes([OP_INFO])))
        return orjson.loads(payload[1:])

    async def _call(self, request: bytes) -> bytes:
        async with self._lock:
            try:
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                assert self._reader is not None
                self._writer.write(request)
                await self._writer.drain()
                payload = await read_frame(self._reader)
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                await self._reset()
                raise ReplicaConnectionError(
                    f"Lost the connection to the replica on port {self.port}: {exc!r}"
                ) from exc
            except asyncio.CancelledError:
                await self._reset()  # a half-read reply would poison the next call
                raise
        if payload[0] != STATUS_OK:
            raise ReplicaReplyError(payload[1:].decode(errors="replace"))
        return payload

    async def _reset(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        async with self._lock:
            await self._reset()
