"""Probe texts sent straight to a revision's replicas: the smoke test and the compatibility gate."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from greenroom.registry.weights import inspect_model
from greenroom.runtime.protocol import ReplicaClient

PROBE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Embeddings map text to vectors so that similar meanings lie close together.",
    "The invoice is due at the end of the month.",
    "A man is playing a guitar on the stage.",
    "Neural networks learn representations from data.",
    "What is the weather like in Paris today?",
    "She bought fresh bread and cheese at the market.",
    "The server returned an error after the upgrade.",
    "Rain is expected tomorrow afternoon.",
]


@dataclass(frozen=True)
class ProbeResult:
    vectors: np.ndarray
    latency_s: float


class ProbeError(Exception):
    """The probe could not be run (no ready replica, or the replica failed)."""


@functools.lru_cache(maxsize=64)
def tokenize_probes(model_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The probe texts' token ids for a model (lengths, ids back to back), read-only. Kept per
    model directory, which holds one model's weights for good (named by its content hash): a
    rollout probes each revision once or twice, and loading a tokenizer takes tens of ms."""
    info = inspect_model(model_path)
    tokenizer = Tokenizer.from_file(str(info.tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(info.max_seq_length)
    encodings = tokenizer.encode_batch(PROBE_TEXTS)
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    flat_ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])
    lengths.flags.writeable = flat_ids.flags.writeable = False
    return lengths, flat_ids


@functools.lru_cache(maxsize=64)
def model_dimension(model_path: Path) -> int:
    return inspect_model(model_path).dimension


async def embed_probes(
    model_path: Path, replicas: list[dict[str, Any]], *, secret: str
) -> ProbeResult:
    """Embed the probe texts on one ready replica of a revision (as reported to the store);
    `secret` is the revision's `replica_secret`. The files are read off the event loop (in
    `greenroom serve` it is the API's too)."""
    ready = [r for r in replicas if r.get("state") == "ready" and r.get("port")]
    if not ready:
        raise ProbeError("no ready replica to probe")
    lengths, flat_ids = await asyncio.to_thread(tokenize_probes, model_path)
    dimension = await asyncio.to_thread(model_dimension, model_path)
    client = ReplicaClient(ready[0]["host"], int(ready[0]["port"]), secret, max_dimension=dimension)
    try:
        started = time.perf_counter()
        vectors = await client.embed(lengths, flat_ids)
        return ProbeResult(np.array(vectors), time.perf_counter() - started)
    except Exception as exc:
        raise ProbeError(f"the replica failed to embed the probe texts: {exc}") from exc
    finally:
        await client.close()


def smoke_problem(
    result: ProbeResult, *, dimension: int, normalize: bool, latency_bound_s: float
) -> str | None:
    """Why the vectors fail the smoke test, or None when they pass."""
    vectors = result.vectors
    if vectors.shape != (len(PROBE_TEXTS), dimension):
        return f"vectors have shape {vectors.shape}, expected ({len(PROBE_TEXTS)}, {dimension})"
    if not np.isfinite(vectors).all():
        return "vectors contain NaN or infinite values"
    if normalize:
        norms = np.linalg.norm(vectors, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            return f"vectors are not unit length (norms {norms.min():.3f}–{norms.max():.3f})"
    if result.latency_s > latency_bound_s:
        return f"probe latency {result.latency_s:.2f} s is over the bound of {latency_bound_s} s"
    return None


def mean_cosine(blue: np.ndarray, green: np.ndarray) -> float | None:
    """Mean cosine similarity of paired vectors; None when the spaces differ in dimension."""
    if blue.shape != green.shape:
        return None
    norms = np.linalg.norm(blue, axis=1) * np.linalg.norm(green, axis=1)
    return float(np.mean((blue * green).sum(axis=1) / np.maximum(norms, 1e-12)))
