"""Issue 9, item 1 (the runtime side) and item 5: what a replica inherits, and its protocol port.

- Item 1: a config's `additional_envs` set `PYTHONWARNINGS=all:0:antigravity.x:0:0` and
  `BROWSER=/bin/sh -c '…' #%s`; at start-up the replica ran the shell command, which read
  `GREENROOM_ADMIN_TOKEN` from the server environment replicas inherited. Now a replica starts
  with a minimal environment (`runtime/environment.py`): no variable of the server's, no
  `GREENROOM_*`, and a config's variables only if allowed (dropped otherwise, even when a
  revision's config holds them, as one stored before the allow-list existed does).
- Item 5: the replica port embedded for any local user, accepted negative ids, buffered frames
  up to 4 GiB and answered ONNX Runtime internals. Now each connection proves it knows the
  revision's secret (handed over a pipe, never in argv or the environment), frames are bounded
  by the revision's limits before they are read, ids are checked, errors are one sentence.

One real server (local runtime, real replica processes), started with `GREENROOM_ADMIN_TOKEN`
in its environment, serves the tiny model for the whole module.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import async_test, wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server
from tokenizers import Tokenizer

from greenroom.app import create_app
from greenroom.config import Settings
from greenroom.registry.weights import inspect_model
from greenroom.runtime import protocol
from greenroom.runtime.base import ReplicaStatus
from greenroom.runtime.protocol import ReplicaClient, ReplicaConnectionError, ReplicaReplyError
from greenroom.signals import Topic
from greenroom.workloads.models import LiveRevision, Revision

TASKS = "/internal/inference-deployment"
MODEL = "tiny"
HOSTILE_ENV = {
    "PYTHONWARNINGS": "all:0:antigravity.x:0:0",  # imports antigravity, which opens $BROWSER
    "BROWSER": "/bin/sh -c 'env > {marker}' #%s",
    "OMP_NUM_THREADS": "1",  # allowed: it reaches the replica
}
FOUR_GIB = 2**32 - 1  # the largest length a frame header can announce
PUSHED_BYTES = 64 * 1024 * 1024
NONCE_BYTES = 32  # the replica's challenge
HANDSHAKE_ANSWER_BYTES = 64  # the client's nonce and HMAC


@dataclass
class Served:
    """The module's server and the one replica of its live revision."""

    url: str
    app: object
    replica: ReplicaStatus
    secret: str
    model_path: Path
    vocab_size: int
    data_dir: Path

    def client(self, secret: str | None = None) -> ReplicaClient:
        assert self.replica.endpoint is not None
        return ReplicaClient(*self.replica.endpoint, self.secret if secret is None else secret)

    def ids(self, text: str = "hello world") -> tuple[np.ndarray, np.ndarray]:
        tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
        ids = np.array(tokenizer.encode(text).ids, dtype=np.int64)
        return np.array([len(ids)], dtype=np.int64), ids


def call(method: str, url: str, **kwargs: object) -> dict:
    response = httpx.request(method, url, timeout=120, headers=ADMIN_HEADERS, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else {}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path, tiny_model_dir: Path
) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("replicas") / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    settings = Settings(
        data_dir=data_dir, default_model_id="", admin_token=ADMIN_TOKEN, drain_grace_s=5
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GREENROOM_ADMIN_TOKEN", ADMIN_TOKEN)  # in the server's own environment
        app = create_app(settings)
        with running_server(app) as url:
            call(
                "POST",
                f"{url}/v1/embedding-models",
                json={"id": MODEL, "source": str(tiny_model_dir)},
            )
            task = call("POST", f"{url}{TASKS}/deploy", json={"embedding_model_id": MODEL})
            wait_until_sync(
                lambda: (
                    call("GET", f"{url}{TASKS}/deploy/{task['id']}")["status"]
                    in {"done", "failed", "canceled", "refused"}
                ),
                deadline_s=120,
                what="the deploy",
            )
            with app.state.store.session_scope() as session:
                live = session.get(LiveRevision, MODEL)
                assert live is not None, call("GET", f"{url}{TASKS}/deploy/{task['id']}")
                revision = session.get(Revision, live.revision_id)
                secret, model_path = revision.replica_secret, Path(revision.model_path)
            (replica,) = app.state.runtimes.ready_replicas(live.revision_id)
            yield Served(
                url,
                app,
                replica,
                secret,
                model_path,
                inspect_model(model_path).vocab_size,
                data_dir,
            )


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ----- item 1: the environment ----------------------------------------------------------------


def test_a_replica_inherits_no_server_secret(served: Served) -> None:
    assert served.replica.pid is not None
    env = environ(served.replica.pid)
    assert not [name for name in env if name.startswith("GREENROOM_")]
    assert ADMIN_TOKEN not in "\0".join(env.values())
    assert set(env) <= {
        "PATH", "HOME", "LANG", "LC_ALL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
        "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    }  # fmt: skip
    assert env["HF_HUB_OFFLINE"] == "1"


def test_additional_envs_that_run_code_never_reach_a_replica(served: Served) -> None:
    """A revision whose stored config holds the attack (written before the allow-list, or by
    anything that bypassed the config API): the supervisor starts it without those variables."""
    marker = served.data_dir / f"pwned-{uuid.uuid4().hex}"
    hostile = {name: value.format(marker=marker) for name, value in HOSTILE_ENV.items()}
    revision_id = str(uuid.uuid4())
    app = served.app
    with app.state.store.session_scope() as session:
        live = session.get(LiveRevision, MODEL)
        blue = session.get(Revision, live.revision_id)
        session.add(
            Revision(
                id=revision_id,
                deployment_id=str(uuid.uuid4()),
                served_name="hostile",
                embedding_model_id=MODEL,
                source=blue.source,
                model_path=blue.model_path,
                content_hash=blue.content_hash,
                engine="onnx",
                config={"threads": 1, "additional_envs": hostile},
                runtime="local",
                desired_replicas=1,
            )
        )
    app.state.signals.notify(Topic.DESIRED)
    try:
        wait_until_sync(
            lambda: bool(app.state.runtimes.ready_replicas(revision_id)),
            deadline_s=120,
            what="the hostile revision's replica to be ready",
        )
        (replica,) = app.state.runtimes.ready_replicas(revision_id)
        env = environ(replica.pid)
        assert "PYTHONWARNINGS" not in env and "BROWSER" not in env
        assert env["OMP_NUM_THREADS"] == "1"
        assert not marker.exists(), marker.read_text()[:2000]  # the shell command never ran
    finally:
        with app.state.store.session_scope() as session:
            session.get(Revision, revision_id).desired_replicas = 0
        app.state.signals.notify(Topic.DESIRED)
        wait_until_sync(
            lambda: revision_id not in app.state.runtimes.revisions(), what="the hostile stop"
        )


# ----- item 5: the protocol port --------------------------------------------------------------


def test_a_connection_without_the_secret_gets_no_embedding(served: Served) -> None:
    """What a local user did: connect and send an EMBED frame. The replica answers nothing
    (past the nonce of its handshake) and hangs up."""
    lengths, ids = served.ids("a sentence long enough to fill more than the handshake")
    request = protocol.encode_embed(lengths, ids)
    assert len(request) >= HANDSHAKE_ANSWER_BYTES
    assert served.replica.endpoint is not None
    with socket.create_connection(served.replica.endpoint, timeout=10) as sock:
        sock.sendall(request)
        received = b""
        # it hangs up (on bytes it never read: maybe a reset); an old replica answered, then
        # waited for the next request
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
    assert len(received) <= NONCE_BYTES  # at most its challenge: no reply, no vector


@async_test
async def test_a_wrong_proof_gets_no_embedding_and_the_secret_is_in_no_listing(
    served: Served,
) -> None:
    assert served.replica.pid is not None
    cmdline = Path(f"/proc/{served.replica.pid}/cmdline").read_bytes()
    assert served.secret.encode() not in cmdline
    assert served.secret not in "\0".join(environ(served.replica.pid).values())
    client = served.client("0" * 64)
    try:
        with pytest.raises(ReplicaConnectionError, match="handshake"):
            await client.embed(*served.ids())
    finally:
        await client.close()
    right = served.client()
    try:
        assert (await right.embed(*served.ids())).shape[0] == 1  # the secret's holder is served
    finally:
        await right.close()


@async_test
async def test_a_frame_announcing_4_gib_is_refused_at_once_without_buffering(
    served: Served,
) -> None:
    assert served.replica.pid is not None and served.replica.endpoint is not None
    before = rss_bytes(served.replica.pid)
    reader, writer = await asyncio.open_connection(*served.replica.endpoint)
    try:
        await protocol.authenticate(reader, writer, served.secret)
        writer.write(protocol._U32.pack(FOUR_GIB))
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 30)  # an error frame, then EOF
        with pytest.raises(ConnectionError):  # it hung up: the body has nowhere to go
            for _ in range(PUSHED_BYTES // (1 << 20)):
                writer.write(b"\0" * (1 << 20))
                await writer.drain()
    finally:
        writer.close()
    (length,) = protocol._U32.unpack_from(reply)
    assert reply[4] == protocol.STATUS_ERROR and length == len(reply) - 4
    assert reply[5:].decode() == "The request is larger than this replica accepts."
    assert rss_bytes(served.replica.pid) - before < 16 * 1024 * 1024
    right = served.client()
    try:  # and it keeps serving
        assert (await right.embed(*served.ids())).shape[0] == 1
    finally:
        await right.close()


@pytest.mark.parametrize("bad_id", [-5, "vocab"])
@async_test
async def test_ids_outside_the_vocabulary_get_one_sentence_without_internals(
    served: Served, bad_id: int | str
) -> None:
    lengths, ids = served.ids()
    ids[1] = served.vocab_size if bad_id == "vocab" else bad_id
    client = served.client()
    try:
        with pytest.raises(ReplicaReplyError) as refused:
            await client.embed(lengths, ids)
        assert (await client.embed(*served.ids())).shape[0] == 1
    finally:
        await client.close()
    message = str(refused.value)
    assert message == f"Token ids must lie in [0, {served.vocab_size}) for this model."
    for internal in ("ONNXRuntime", "onnxruntime", "Traceback", "INVALID_ARGUMENT", ".cc"):
        assert internal not in message
