"""The load check of a model being registered, run in a child process with a bounded time.

`python -m greenroom.registry.check --model-path P --content-hash H --cache-dir D` loads the ONNX
engine (exporting the model into the cache D on first use, so the first deploy finds it there),
runs the warm-up batch and prints one JSON line: what the model produced. On failure it exits
non-zero with the reason as the last line of stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from greenroom.errors import GreenroomError
from greenroom.runtime.engines import EngineOptions, load_engine


class LoadCheckError(Exception):
    """The model loaded but produced something unusable."""


def check(model_path: Path, content_hash: str, cache_dir: Path) -> dict[str, Any]:
    """Load the model with the ONNX engine, embed the warm-up batch, describe the result."""
    started = time.perf_counter()
    options = EngineOptions(
        model_path=model_path,
        content_hash=content_hash,
        engine="onnx",
        threads=1,
        cache_dir=cache_dir,
    )
    engine = load_engine(options)
    vectors = engine.warm_up()
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise LoadCheckError(f"the warm-up batch gave an array of shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise LoadCheckError("the warm-up batch gave non-finite values")
    return {
        "dimension": int(vectors.shape[1]),
        "max_seq_length": engine.info.max_seq_length,
        "pooling": engine.info.pooling,
        "normalize": engine.info.normalize,
        "load_s": round(time.perf_counter() - started, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check that a model loads and embeds.")
    parser.add_argument("--model-path", required=True, type=Path, help="model directory")
    parser.add_argument("--content-hash", required=True, help="sha256 of the model's files")
    parser.add_argument("--cache-dir", required=True, type=Path, help="ONNX export cache")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = check(args.model_path, args.content_hash, args.cache_dir)
    except GreenroomError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    except Exception as exc:  # the reason goes to the registering client
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
