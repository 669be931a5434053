from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import orjson
import pytest
from factories import HASH_ENGINE_DIMENSION, HashEngine
from helpers import async_test

from greenroom.runtime import protocol
from greenroom.runtime.protocol import (
    ReplicaClient,
    ReplicaConnectionError,
    ReplicaReplyError,
)
from greenroom.runtime.replica import ReplicaServer

LOOPBACK = "127.0.0.1"
SECRET = "5e" * 32


def batch(*sequences: list[int]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    flat_ids = np.array([i for s in sequences for i in s], dtype=np.int64)
    return lengths, flat_ids


def unframe(data: bytes) -> bytes:
    """The payload of one frame, checking its length prefix."""
    (length,) = protocol._U32.unpack_from(data)
    assert length == len(data) - 4
    return data[4:]


@asynccontextmanager
async def replica_server(engine: HashEngine) -> AsyncIterator[tuple[ReplicaServer, int]]:
    """A ReplicaServer on loopback, port picked by the OS; stopped on exit."""
    replica = ReplicaServer(engine, SECRET)
    server = await asyncio.start_server(replica.handle, LOOPBACK, 0)
    try:
        yield replica, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        replica.executor.shutdown(wait=True)


@asynccontextmanager
async def client_for(port: int, secret: str = SECRET) -> AsyncIterator[ReplicaClient]:
    client = ReplicaClient(LOOPBACK, port, secret)
    try:
        yield client
    finally:
        await client.close()


def test_embed_request_round_trip() -> None:
    lengths, flat_ids = batch([101, 7, 102], [101, 102], [5])
    decoded_lengths, decoded_ids = protocol.decode_embed(
        unframe(protocol.encode_embed(lengths, flat_ids))
    )
    np.testing.assert_array_equal(decoded_lengths, lengths)
    np.testing.assert_array_equal(decoded_ids, flat_ids)


def test_embed_request_starts_with_the_op() -> None:
    payload = unframe(protocol.encode_embed(*batch([1, 2])))
    assert payload[0] == protocol.OP_EMBED


def test_decode_refuses_lengths_that_do_not_match_the_ids() -> None:
    payload = unframe(protocol.encode_embed(np.array([3]), np.array([1, 2], dtype=np.int64)))
    with pytest.raises(ValueError, match="do not match"):
        protocol.decode_embed(payload)


def test_vectors_reply_layout() -> None:
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = unframe(protocol.ok_vectors(vectors))
    status, count, dim = protocol._EMBED_REPLY.unpack_from(payload)
    assert (status, count, dim) == (protocol.STATUS_OK, 2, 3)
    body = np.frombuffer(payload, dtype="<f4", offset=protocol._EMBED_REPLY.size)
    np.testing.assert_array_equal(body.reshape(2, 3), vectors)


def test_json_reply() -> None:
    payload = unframe(protocol.ok_json({"healthy": True}))
    assert payload[0] == protocol.STATUS_OK
    assert orjson.loads(payload[1:]) == {"healthy": True}


def test_error_frame() -> None:
    payload = unframe(protocol.error("model exploded: ünïcode"))
    assert payload[0] == protocol.STATUS_ERROR
    assert payload[1:].decode() == "model exploded: ünïcode"


@async_test
async def test_client_embeds_through_a_replica_server() -> None:
    engine = HashEngine()
    sequences = [[101, 223, 102], [101, 102], [101, 7, 8, 9, 10, 102]]
    async with replica_server(engine) as (_, port), client_for(port) as client:
        vectors = await client.embed(*batch(*sequences))
    assert vectors.shape == (3, HASH_ENGINE_DIMENSION)
    assert vectors.dtype == np.float32
    for row, sequence in zip(vectors, sequences, strict=True):
        np.testing.assert_allclose(row, engine.expected(sequence), rtol=1e-6)


@async_test
async def test_client_reuses_one_connection_for_many_calls() -> None:
    engine = HashEngine()
    async with replica_server(engine) as (_, port), client_for(port) as client:
        first = await client.embed(*batch([1, 2, 3]))
        writer = client._writer
        second = await client.embed(*batch([1, 2, 3]))
        assert client._writer is writer
    np.testing.assert_array_equal(first, second)


@async_test
async def test_concurrent_calls_on_one_client_are_serialised() -> None:
    engine = HashEngine()
    sequences = [[i, i + 1, i + 2] for i in range(1, 40)]
    async with replica_server(engine) as (_, port), client_for(port) as client:
        results = await asyncio.gather(*(client.embed(*batch(s)) for s in sequences))
    for result, sequence in zip(results, sequences, strict=True):
        np.testing.assert_allclose(result[0], engine.expected(sequence), rtol=1e-6)


@async_test
async def test_health_and_info() -> None:
    async with replica_server(HashEngine()) as (_, port), client_for(port) as client:
        await client.health()
        info = await client.info()
    assert info == {"dimension": HASH_ENGINE_DIMENSION, "pid": os.getpid(), "engine": "hash"}


class FailingEngine(HashEngine):
    """Raises with internals in the message, as ONNX Runtime does on bad input."""

    def _pool(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if (input_ids == 13).any():
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Gather idx 13 /x/y.cc")
        return super()._pool(input_ids, attention_mask)


@async_test
async def test_engine_error_becomes_one_neutral_sentence_and_the_replica_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with replica_server(FailingEngine()) as (_, port), client_for(port) as client:
        with pytest.raises(ReplicaReplyError) as refused:
            await client.embed(*batch([1, 13, 2]))
        vectors = await client.embed(*batch([1, 5, 2]))
    assert str(refused.value) == "The replica could not embed this batch."
    assert "INVALID_ARGUMENT" in caplog.text  # the details are in the replica's log
    assert vectors.shape == (1, HASH_ENGINE_DIMENSION)


@pytest.mark.parametrize(
    ("sequences", "sentence"),
    [
        ([[1, -5, 2]], "Token ids must lie in [0, 1000) for this model."),
        ([[1, 1000]], "Token ids must lie in [0, 1000) for this model."),
        ([list(range(1, 130))], "An input may hold at most 128 token ids for this model."),
        ([[1]] * 17, "A batch may hold at most 16 inputs."),
    ],
)
@async_test
async def test_a_batch_outside_the_limits_is_refused_with_one_sentence(
    sequences: list[list[int]], sentence: str
) -> None:
    engine = HashEngine()  # vocabulary 1000, max sequence length 128
    async with replica_server(engine) as (replica, port), client_for(port) as client:
        replica.limits = protocol.Limits.for_batches(1, 128, 1000)  # at least 16 inputs
        with pytest.raises(ReplicaReplyError) as refused:
            await client.embed(*batch(*sequences))
        vectors = await client.embed(*batch([1, 5, 2]))
    assert str(refused.value) == sentence
    np.testing.assert_allclose(vectors[0], engine.expected([1, 5, 2]), rtol=1e-6)


@async_test
async def test_a_client_with_another_secret_gets_no_answer() -> None:
    async with replica_server(HashEngine()) as (_, port), client_for(port, "0" * 64) as client:
        with pytest.raises(ReplicaConnectionError, match="handshake"):
            await client.embed(*batch([1, 2, 3]))


@async_test
async def test_a_client_refuses_a_peer_that_does_not_know_the_secret() -> None:
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Plays the handshake without the secret: its proof cannot be right."""
        writer.write(os.urandom(protocol.NONCE_BYTES))
        await reader.readexactly(protocol.NONCE_BYTES + protocol.MAC_BYTES)
        writer.write(os.urandom(protocol.MAC_BYTES))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(impostor, LOOPBACK, 0)
    try:
        async with client_for(server.sockets[0].getsockname()[1]) as client:
            with pytest.raises(ReplicaConnectionError, match="did not prove"):
                await client.embed(*batch([1, 2, 3]))
    finally:
        server.close()
        await server.wait_closed()


@async_test
async def test_a_frame_over_the_limit_is_refused_before_its_body_is_read() -> None:
    async with replica_server(HashEngine()) as (replica, port):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        await protocol.authenticate(reader, writer, SECRET)
        writer.write(protocol._U32.pack(replica.limits.max_request_bytes + 1))
        await writer.drain()
        reply = unframe(await reader.read())  # one error frame, then the replica hangs up
        writer.close()
    assert reply[0] == protocol.STATUS_ERROR
    assert reply[1:].decode() == "The request is larger than this replica accepts."


@async_test
async def test_a_client_reads_no_reply_larger_than_its_request_allows() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await protocol.accept(reader, writer, SECRET)
        await protocol.read_frame(reader)
        writer.write(protocol._U32.pack(2**31))  # announces 2 GiB of vectors for one input
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(flood, LOOPBACK, 0)
    try:
        async with client_for(server.sockets[0].getsockname()[1]) as client:
            client.max_dimension = 8
            with pytest.raises(ReplicaConnectionError, match="larger than the request allows"):
                await client.embed(*batch([1, 2]))
            assert client._writer is None
    finally:
        server.close()
        await server.wait_closed()


@async_test
async def test_unknown_op_is_an_error_reply() -> None:
    async with replica_server(HashEngine()) as (_, port), client_for(port) as client:
        with pytest.raises(ReplicaReplyError, match="does not know this request"):
            await client._call(protocol.frame(bytes([99])))


@async_test
async def test_malformed_embed_request_is_an_error_reply() -> None:
    request = protocol.encode_embed(np.array([5]), np.array([1, 2], dtype=np.int64))
    async with replica_server(HashEngine()) as (_, port), client_for(port) as client:
        with pytest.raises(ReplicaReplyError, match="do not match"):
            await client._call(request)


@async_test
async def test_nothing_listening_raises_connection_error() -> None:
    async with replica_server(HashEngine()) as (_, port):
        pass  # the port is free again once the server is closed
    async with client_for(port) as client:
        with pytest.raises(ReplicaConnectionError, match=f"port {port}"):
            await client.health()


@async_test
async def test_connection_loss_raises_and_the_next_call_reconnects() -> None:
    engine = HashEngine()
    replica = ReplicaServer(engine, SECRET)
    connections: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await replica.handle(reader, writer)

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client_for(port) as client:
            await client.health()
            connections[0].transport.abort()  # the replica side goes away mid-conversation
            with pytest.raises(ReplicaConnectionError):
                await client.embed(*batch([1, 2, 3]))
            vectors = await client.embed(*batch([1, 2, 3]))
        assert len(connections) == 2
        np.testing.assert_allclose(vectors[0], engine.expected([1, 2, 3]), rtol=1e-6)
    finally:
        server.close()
        await server.wait_closed()
        replica.executor.shutdown(wait=True)


@async_test
async def test_replica_closing_mid_reply_raises_connection_error() -> None:
    async def half_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await protocol.accept(reader, writer, SECRET)
        await protocol.read_frame(reader)
        writer.write(protocol.ok_vectors(np.ones((1, 4), dtype=np.float32))[:10])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_reply, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client_for(port) as client:
            with pytest.raises(ReplicaConnectionError, match="IncompleteReadError"):
                await client.embed(*batch([1, 2]))
            assert client._writer is None
    finally:
        server.close()
        await server.wait_closed()


class SlowEngine(HashEngine):
    """Each batch takes `seconds`; warm-ups are counted."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.warm_ups = 0

    def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return super().embed(lengths, flat_ids)

    def warm_up(self) -> np.ndarray:
        self.warm_ups += 1
        return super().warm_up()


@async_test
async def test_a_health_check_behind_running_batches_answers_at_once() -> None:
    """Batches in flight are the proof of life: the health check does not queue its warm-up
    embed behind them (a slow, busy replica would miss its health timeout and be killed)."""
    engine = SlowEngine(seconds=1.0)
    async with (
        replica_server(engine) as (_, port),
        client_for(port) as busy,
        client_for(port) as checker,
    ):
        await checker.health()  # idle: a real warm-up embed
        assert engine.warm_ups == 1
        embedding = asyncio.ensure_future(busy.embed(*batch([1, 2, 3])))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await checker.health()
        assert time.monotonic() - started < 0.5
        assert engine.warm_ups == 1
        await embedding
