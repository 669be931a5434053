"""Export a sentence-transformers model (transformer + pooling) to ONNX.

Run as `python -m greenroom.runtime.engines.export MODEL_DIR OUTPUT.onnx`: it imports torch, so
replicas run it in a child process. Legacy TorchScript exporter, opset 17, dynamic batch and
sequence axes; the graph outputs `sentence_embedding` before normalisation.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoModel

from greenroom.registry.weights import inspect_model

OPSET = 17


class PooledEncoder(torch.nn.Module):
    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.info = inspect_model(model_dir)
        self.transformer = AutoModel.from_pretrained(str(model_dir))
        self.transformer.eval()

    def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
        tokens = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        if self.info.pooling == "cls":
            return tokens[:, 0]
        if self.info.pooling == "max":
            return tokens.masked_fill(mask == 0, -1e9).max(dim=1).values
        summed = (tokens * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        if self.info.pooling == "mean_sqrt_len":
            return summed / counts.sqrt()
        return summed / counts


def export(model_dir: Path, output: Path) -> None:
    encoder = PooledEncoder(model_dir)
    sample = torch.ones((2, 8), dtype=torch.long)
    partial = output.with_suffix(".partial.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (sample, torch.ones_like(sample), torch.zeros_like(sample)),
            str(partial),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "token_type_ids": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(partial, output)


if __name__ == "__main__":
    export(Path(sys.argv[1]), Path(sys.argv[2]))
