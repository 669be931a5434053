"""Engines turn token ids into vectors inside a replica; they share one interface."""

from __future__ import annotations

import importlib

from greenroom.runtime.engines.base import Engine, EngineOptions

# each engine's module and class; a module is imported only when its engine is asked for (torch
# is heavy), and a spare replica imports its engine's module ahead (`greenroom.runtime.spare`)
ENGINES = {
    "onnx": ("greenroom.runtime.engines.onnx_engine", "OnnxEngine"),
    "torch": ("greenroom.runtime.engines.torch_engine", "TorchEngine"),
}


def load_engine(options: EngineOptions) -> Engine:
    """Load the engine a replica was asked for."""
    if options.engine not in ENGINES:
        raise ValueError(f"Unknown engine '{options.engine}': use onnx or torch.")
    module_name, class_name = ENGINES[options.engine]
    engine: Engine = getattr(importlib.import_module(module_name), class_name)(options)
    return engine


__all__ = ["ENGINES", "Engine", "EngineOptions", "load_engine"]
