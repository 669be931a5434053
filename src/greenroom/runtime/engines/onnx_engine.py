"""ONNX Runtime engine: no torch in the replica; the export is cached per content hash."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from greenroom.errors import BackendError
from greenroom.runtime.engines.base import Engine, EngineOptions
from greenroom.runtime.environment import child_environment

EXPORT_TIMEOUT_S = 600


class OnnxEngine(Engine):
    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        model_file = ensure_onnx_model(options)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        # No spin-waiting after each run: an idle replica otherwise burns most of a core, which
        # starves whatever shares the machine (a staged replica at a low priority above all).
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_file), session_options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}

    def _pool(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        (vectors,) = self.session.run(["sentence_embedding"], feeds)
        return vectors


def export_dir(options: EngineOptions) -> Path:
    cache = options.cache_dir or Path("~/.greenroom/onnx").expanduser()
    return cache / options.content_hash


def ensure_onnx_model(options: EngineOptions) -> Path:
    """The cached ONNX file for this model and quantisation, exported on first use.

    The export runs in a child process (it needs torch; the replica must not import it) under a
    file lock, so replicas starting together export once; files appear by atomic rename.
    """
    directory = export_dir(options)
    fp32 = directory / "model.onnx"
    target = directory / ("model-int8.onnx" if options.quantization == "int8" else "model.onnx")
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not fp32.is_file():
            _export_in_child(options.model_path, fp32)
        if options.quantization == "int8" and not target.is_file():
            _quantize_int8(fp32, target)
    return target


def _export_in_child(model_path: Path, output: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "greenroom.runtime.engines.export",
        str(model_path),
        str(output),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, env=child_environment()
    )
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"ONNX export of {model_path} failed: {last_line}")


def _quantize_int8(fp32: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = target.with_suffix(".partial.onnx")
    # Per-channel scales: per-tensor int8 weights lose too much (cosine ~0.8 to fp32 on
    # all-MiniLM-L6-v2 on AVX2 CPUs); per channel keeps it above 0.97.
    quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8, per_channel=True)
    os.replace(partial, target)
