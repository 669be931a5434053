"""Engines turn token ids into vectors inside a replica; they share one interface."""

from __future__ import annotations

from greenroom.runtime.engines.base import Engine, EngineOptions

# the module of each engine, which a spare replica imports ahead (`greenroom.runtime.spare`)
ENGINE_MODULES = {
    "onnx": "greenroom.runtime.engines.onnx_engine",
    "torch": "greenroom.runtime.engines.torch_engine",
}


def load_engine(options: EngineOptions) -> Engine:
    """Load the engine a replica was asked for; torch is imported only for `torch`."""
    if options.engine == "onnx":
        from greenroom.runtime.engines.onnx_engine import OnnxEngine

        return OnnxEngine(options)
    if options.engine == "torch":
        from greenroom.runtime.engines.torch_engine import TorchEngine

        return TorchEngine(options)
    raise ValueError(f"Unknown engine '{options.engine}': use onnx or torch.")


__all__ = ["ENGINE_MODULES", "Engine", "EngineOptions", "load_engine"]
