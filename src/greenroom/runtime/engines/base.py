"""The engine interface: a padded batch of token ids in, float32 sentence vectors out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from greenroom.registry.weights import ModelInfo, inspect_model


@dataclass(frozen=True)
class EngineOptions:
    model_path: Path
    content_hash: str
    engine: str = "onnx"
    quantization: str = "none"
    threads: int = 1
    cache_dir: Path | None = None  # where ONNX exports are kept, one per content hash
    gpu: int = 0


class Engine(ABC):
    """Turns ragged token-id sequences into one float32 vector each.

    Subclasses implement `_pool` on a padded batch; padding and normalisation are shared so that
    every engine produces the same vectors for the same model.
    """

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.info: ModelInfo = inspect_model(options.model_path)

    def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        """Embed `len(lengths)` sequences whose ids lie back to back in `flat_ids`."""
        input_ids, attention_mask = self.pad(lengths, flat_ids)
        vectors = self._pool(input_ids, attention_mask).astype(np.float32, copy=False)
        if self.info.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors

    def pad(self, lengths: np.ndarray, flat_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch, width = len(lengths), int(lengths.max()) if len(lengths) else 0
        input_ids = np.full((batch, width), self.info.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((batch, width), dtype=np.int64)
        offset = 0
        for row, length in enumerate(lengths.tolist()):
            input_ids[row, :length] = flat_ids[offset : offset + length]
            attention_mask[row, :length] = 1
            offset += length
        return input_ids, attention_mask

    def warm_up(self) -> np.ndarray:
        """Embed a small fixed batch: proves the model loaded and runs (readiness)."""
        lengths = np.array([4, 8], dtype=np.int64)
        ids = (np.arange(12, dtype=np.int64) % max(self.info.vocab_size - 1, 1)) + 1
        return self.embed(lengths, ids)

    @abstractmethod
    def _pool(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Sentence vectors (before normalisation) of a padded batch."""
