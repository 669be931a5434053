"""Test doubles and builders shared by the test suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from greenroom.registry.weights import ModelInfo
from greenroom.runtime.engines import Engine, EngineOptions

HASH_ENGINE_DIMENSION = 8


class HashEngine(Engine):
    """A model-free engine: deterministic vectors computed from the token ids alone.

    Each token contributes `cos(id · (j + 1))` to component j, so vectors depend on the ids (and
    their count) but never on padding. A negative token id raises, to exercise error replies.
    """

    def __init__(self, dimension: int = HASH_ENGINE_DIMENSION, *, normalize: bool = True) -> None:
        self.options = EngineOptions(
            model_path=Path("/nonexistent/hash-engine"), content_hash="0", engine="hash"
        )
        self.info = ModelInfo(
            path=self.options.model_path,
            dimension=dimension,
            max_seq_length=128,
            pooling="mean",
            normalize=normalize,
            vocab_size=1000,
            pad_token_id=0,
        )

    def _pool(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if (input_ids < 0).any():
            raise ValueError("negative token id")
        frequencies = np.arange(1, self.info.dimension + 1, dtype=np.float64)
        per_token = np.cos(input_ids[..., None] * frequencies)  # batch × width × dim
        return (per_token * attention_mask[..., None]).sum(axis=1).astype(np.float32)

    def expected(self, ids: list[int]) -> np.ndarray:
        """The vector of one sequence, computed without the padding path."""
        flat = np.asarray(ids, dtype=np.int64)
        return self.embed(np.array([len(flat)], dtype=np.int64), flat)[0]
