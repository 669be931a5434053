"""The replica wire protocol: an authenticated handshake, then length-prefixed binary frames.

Handshake (every connection, before any frame): the replica sends a random 32-byte nonce `r`;
the client answers its own nonce `c` and `HMAC-SHA256(secret, CLIENT_LABEL ‖ r ‖ c)`; the replica
checks it (`hmac.compare_digest`) and answers `HMAC-SHA256(secret, REPLICA_LABEL ‖ c ‖ r)`, which
the client checks in turn. `secret` is the revision's `replica_secret`. A wrong or late answer
(`HANDSHAKE_TIMEOUT_S`) closes the connection without a word, so a peer without the secret never
reaches the engine, and a client never sends token ids to an impostor on a reused port.

Token ids go in and float32 vectors come out as raw little-endian arrays (no JSON lists), one
request outstanding per connection. Frames: `u32 length` then the payload; each side bounds what
it reads before reading it (`Limits` on the replica, the expected reply size on the client).

Requests: `u8 op` then, for EMBED, `u32 n`, `n × u32 lengths`, `Σ lengths × i32 ids`.
Replies:  `u8 status` (0 ok, 1 error) then, for EMBED, `u32 n`, `u32 dim`, `n × dim × f32`;
          for INFO a JSON object; for an error one sentence in UTF-8 (never internals).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

import numpy as np
import orjson

from greenroom.errors import BackendError

OP_EMBED = 1
OP_HEALTH = 2  # the replica embeds its warm-up batch: a health check that really embeds
OP_INFO = 3
STATUS_OK = 0
STATUS_ERROR = 1

NONCE_BYTES = 32
MAC_BYTES = 32
HANDSHAKE_TIMEOUT_S = 5.0
CLIENT_LABEL = b"greenroom replica protocol 1: client\0"
REPLICA_LABEL = b"greenroom replica protocol 1: replica\0"

# Every replica accepts batches of at least this many inputs (the rollout's probe texts).
MIN_BATCH_ITEMS = 16
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a ceiling whatever a config says
MAX_SMALL_REPLY_BYTES = 64 * 1024  # error sentences, health and info answers
MAX_DIMENSION = 65536  # the reply bound when a client does not know the model's dimension
MISMATCH = "The batch's lengths do not match its token ids."

_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<BI")  # op/status, count
_EMBED_REPLY = struct.Struct("<BII")


class ReplicaConnectionError(BackendError):
    """The connection to a replica broke: the replica died or was stopped, refused us, or broke
    the protocol."""


class ReplicaReplyError(BackendError):
    """The replica answered with an error."""


class RefusedRequest(ValueError):
    """A request the replica does not run; the message is the sentence the client gets."""


@dataclass(frozen=True)
class Limits:
    """What one replica accepts: derived from the revision's max batch size and the model."""

    max_items: int
    max_length: int  # token ids per input: the model's max sequence length
    vocab_size: int

    @classmethod
    def for_batches(cls, max_batch_size: int, max_length: int, vocab_size: int) -> Limits:
        return cls(max(max_batch_size, MIN_BATCH_ITEMS), max(max_length, 1), vocab_size)

    @property
    def max_request_bytes(self) -> int:
        """The largest EMBED payload these limits allow (header, lengths, ids)."""
        ids = self.max_items * self.max_length
        return min(_HEADER.size + 4 * self.max_items + 4 * ids, MAX_FRAME_BYTES)


# ----- the handshake ------------------------------------------------------------------------
def _mac(secret: str, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret.encode(), label + first + second, hashlib.sha256).digest()


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: str) -> bool:
    """The replica's side: whether the peer proved it knows the secret (it is told nothing
    either way; on False the caller closes the connection)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    writer.write(nonce)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(
            reader.readexactly(NONCE_BYTES + MAC_BYTES), HANDSHAKE_TIMEOUT_S
        )
    except (TimeoutError, asyncio.IncompleteReadError):
        return False
    client_nonce, mac = answer[:NONCE_BYTES], answer[NONCE_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, CLIENT_LABEL, nonce, client_nonce)):
        return False
    writer.write(_mac(secret, REPLICA_LABEL, client_nonce, nonce))
    await writer.drain()
    return True


async def authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: str
) -> None:
    """The client's side; raises `ReplicaConnectionError` when the replica does not prove it
    knows the secret (or closes the connection because we did not)."""

    async def exchange() -> bool:
        """Whether the replica proved it knows the secret."""
        nonce = await reader.readexactly(NONCE_BYTES)
        client_nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(client_nonce + _mac(secret, CLIENT_LABEL, nonce, client_nonce))
        await writer.drain()
        proof = await reader.readexactly(MAC_BYTES)
        return hmac.compare_digest(proof, _mac(secret, REPLICA_LABEL, client_nonce, nonce))

    try:
        proved = await asyncio.wait_for(exchange(), HANDSHAKE_TIMEOUT_S)
    except (TimeoutError, asyncio.IncompleteReadError) as exc:
        raise ReplicaConnectionError(
            "The replica closed the connection during the handshake: the revision's secret "
            "does not match, or it is not a greenroom replica."
        ) from exc
    if not proved:
        raise ReplicaConnectionError(
            "The peer did not prove it knows the revision's secret; it is not its replica."
        )


# ----- frames -------------------------------------------------------------------------------
def encode_embed(lengths: np.ndarray, flat_ids: np.ndarray) -> bytes:
    body = (
        _HEADER.pack(OP_EMBED, len(lengths))
        + lengths.astype("<u4", copy=False).tobytes()
        + flat_ids.astype("<i4", copy=False).tobytes()
    )
    return _U32.pack(len(body)) + body


def decode_embed(payload: bytes, limits: Limits | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and ids of an EMBED payload, checked against `limits` when given; raises
    `RefusedRequest` with the sentence for the client."""
    if len(payload) < _HEADER.size:
        raise RefusedRequest("The request is too short to be a batch.")
    _, count = _HEADER.unpack_from(payload)
    if limits is not None and count > limits.max_items:
        raise RefusedRequest(f"A batch may hold at most {limits.max_items} inputs.")
    offset = _HEADER.size
    if len(payload) < offset + 4 * count or (len(payload) - offset) % 4:
        raise RefusedRequest(MISMATCH)
    lengths = np.frombuffer(payload, dtype="<u4", count=count, offset=offset).astype(np.int64)
    flat_ids = np.frombuffer(payload, dtype="<i4", offset=offset + 4 * count).astype(np.int64)
    check_batch(lengths, flat_ids, limits)
    return lengths, flat_ids


def check_batch(lengths: np.ndarray, flat_ids: np.ndarray, limits: Limits | None) -> None:
    """Refuse (`RefusedRequest`) a batch whose lengths do not match its ids or that leaves the
    limits: too many inputs, too long an input, ids outside the model's vocabulary."""
    if int(lengths.sum()) != len(flat_ids) or (len(lengths) and lengths.min() < 0):
        raise RefusedRequest(MISMATCH)
    if limits is None:
        return
    if len(lengths) > limits.max_items:
        raise RefusedRequest(f"A batch may hold at most {limits.max_items} inputs.")
    if len(lengths) and int(lengths.max()) > limits.max_length:
        raise RefusedRequest(
            f"An input may hold at most {limits.max_length} token ids for this model."
        )
    if len(flat_ids) and (flat_ids.min() < 0 or flat_ids.max() >= limits.vocab_size):
        raise RefusedRequest(f"Token ids must lie in [0, {limits.vocab_size}) for this model.")


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
    return frame(bytes([STATUS_ERROR]) + message.encode()[: MAX_SMALL_REPLY_BYTES - 1])


class FrameTooLarge(Exception):
    """A frame announced more bytes than the reader accepts; nothing of it was read."""

    def __init__(self, length: int) -> None:
        super().__init__(f"a frame of {length} bytes")
        self.length = length


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame's payload; `FrameTooLarge` before reading a body over `max_bytes`."""
    (length,) = _U32.unpack(await reader.readexactly(4))
    if length > max_bytes:
        raise FrameTooLarge(length)
    return await reader.readexactly(length)


def embed_reply_bytes(count: int, max_dimension: int | None) -> int:
    """The largest correct EMBED reply of `count` vectors, or of an error sentence, whichever
    is larger."""
    vectors = count * (max_dimension or MAX_DIMENSION) * 4
    return max(_EMBED_REPLY.size + vectors, MAX_SMALL_REPLY_BYTES)


class ReplicaClient:
    """One connection to one replica; calls are serialised (one request outstanding).

    `secret` is the revision's replica secret; `max_dimension` (the model's dimension, when
    known) bounds the vectors of a reply, which is never read past count × dimension.
    """

    def __init__(
        self, host: str, port: int, secret: str, *, max_dimension: int | None = None
    ) -> None:
        self.host, self.port = host, port
        self.max_dimension = max_dimension
        self._secret = secret
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ReplicaClient({self.host!r}, {self.port})"

    async def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        count = len(lengths)
        payload = await self._call(
            encode_embed(lengths, flat_ids), embed_reply_bytes(count, self.max_dimension)
        )
        if len(payload) < _EMBED_REPLY.size:
            await self._broken("a truncated embedding reply")
        _, replied, dim = _EMBED_REPLY.unpack_from(payload)
        wrong_dim = dim == 0 or dim > (self.max_dimension or MAX_DIMENSION)
        if replied != count or wrong_dim or len(payload) != _EMBED_REPLY.size + 4 * count * dim:
            await self._broken("an embedding reply that does not fit the request")
        return np.frombuffer(
            payload, dtype="<f4", count=count * dim, offset=_EMBED_REPLY.size
        ).reshape(count, dim)

    async def health(self) -> None:
        await self._call(frame(bytes([OP_HEALTH])), MAX_SMALL_REPLY_BYTES)

    async def info(self) -> dict:
        payload = await self._call(frame(bytes([OP_INFO])), MAX_SMALL_REPLY_BYTES)
        return orjson.loads(payload[1:])

    async def _call(self, request: bytes, max_reply_bytes: int = MAX_SMALL_REPLY_BYTES) -> bytes:
        async with self._lock:
            try:
                if self._writer is None:
                    await self._connect()
                assert self._reader is not None and self._writer is not None
                self._writer.write(request)
                await self._writer.drain()
                payload = await read_frame(self._reader, max_reply_bytes)
            except FrameTooLarge as exc:
                await self._reset()
                raise ReplicaConnectionError(
                    f"The replica on port {self.port} sent a reply larger than the request "
                    f"allows ({exc.length} bytes)."
                ) from exc
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                await self._reset()
                raise ReplicaConnectionError(
                    f"Lost the connection to the replica on port {self.port}: {exc!r}"
                ) from exc
            except asyncio.CancelledError:
                await self._reset()  # a half-read reply would poison the next call
                raise
        if not payload:
            await self._broken("an empty reply")
        if payload[0] != STATUS_OK:
            raise ReplicaReplyError(payload[1:].decode(errors="replace"))
        return payload

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        try:
            await authenticate(self._reader, self._writer, self._secret)
        except ReplicaConnectionError as exc:
            await self._reset()
            raise ReplicaConnectionError(f"Replica on port {self.port}: {exc}") from None

    async def _broken(self, what: str) -> None:
        await self.close()
        raise ReplicaConnectionError(f"The replica on port {self.port} sent {what}.")

    async def _reset(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        async with self._lock:
            await self._reset()
