"""sentence-transformers engine: CPU threads configurable, CUDA when present and asked for."""

from __future__ import annotations

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from greenroom.runtime.engines.base import Engine, EngineOptions


class TorchEngine(Engine):
    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        torch.set_num_threads(options.threads)
        use_cuda = options.gpu > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if use_cuda:
            self.chunk_tokens = None
        self.model = SentenceTransformer(str(options.model_path), device=str(self.device))
        self.model.eval()

    def _pool(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        features = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(attention_mask).to(self.device),
            "token_type_ids": torch.zeros(input_ids.shape, dtype=torch.long, device=self.device),
        }
        with torch.inference_mode():
            output = self.model.forward(features)
        return output["sentence_embedding"].float().cpu().numpy()
