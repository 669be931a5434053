from __future__ import annotations

import asyncio
import os
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
    replica = ReplicaServer(engine)
    server = await asyncio.start_server(replica.handle, LOOPBACK, 0)
    try:
        yield replica, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        replica.executor.shutdown(wait=True)


@asynccontextmanager
async def client_for(port: int) -> AsyncIterator[ReplicaClient]:
    client = ReplicaClient(LOOPBACK, port)
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
    with pytest.raises(ValueError, match="does not match"):
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
    sequences = [[101, 2023, 102], [101, 102], [101, 7, 8, 9, 10, 102]]
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


@async_test
async def test_engine_error_becomes_a_reply_error_and_the_replica_keeps_serving() -> None:
    async with replica_server(HashEngine()) as (_, port), client_for(port) as client:
        with pytest.raises(ReplicaReplyError, match="ValueError: negative token id"):
            await client.embed(*batch([1, -5, 2]))
        vectors = await client.embed(*batch([1, 5, 2]))
    assert vectors.shape == (1, HASH_ENGINE_DIMENSION)


@async_test
async def test_unknown_op_is_an_error_reply() -> None:
    async with replica_server(HashEngine()) as (_, port), client_for(port) as client:
        with pytest.raises(ReplicaReplyError, match="unknown op 99"):
            await client._call(protocol.frame(bytes([99])))


@async_test
async def test_malformed_embed_request_is_an_error_reply() -> None:
    request = protocol.encode_embed(np.array([5]), np.array([1, 2], dtype=np.int64))
    async with replica_server(HashEngine()) as (_, port), client_for(port) as client:
        with pytest.raises(ReplicaReplyError, match="does not match"):
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
    replica = ReplicaServer(engine)
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
