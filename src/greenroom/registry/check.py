"""The storing and load check of a model being registered, in a child process with a bounded time.

`python -m greenroom.registry.check --source S --incoming I --store R --cache-dir D --max-bytes N
--max-files M` lists the model directory S (refusing links out of it and what exceeds the bounds
before reading anything), copies it into the empty folder I while hashing it and verifies the copy,
loads that copy with the ONNX engine (exporting the model into the cache D on first use, so the
first deploy finds it there), runs the warm-up batch, moves the copy into the store R as
`R/<content hash>` and prints one JSON line: the hash, the stored path and what the model produced.

On failure it exits with `EXIT_UNUSABLE` (the source is not a usable model directory),
`EXIT_NOT_STORED` (the store could not take it), `EXIT_REFUSED` (its configuration is not
supported: the reason is for the client) or 1 (it does not load), the reason as the last line of
stderr; but for `EXIT_REFUSED` the server logs it and the client gets one neutral sentence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from greenroom.errors import ModelSourceError
from greenroom.registry.store import copy_model, list_model_files, publish
from greenroom.registry.weights import (
    EXIT_NOT_STORED,
    EXIT_REFUSED,
    EXIT_UNUSABLE,
    UnusableSourceError,
)
from greenroom.runtime.engines import EngineOptions, load_engine

__all__ = ["EXIT_NOT_STORED", "EXIT_REFUSED", "EXIT_UNUSABLE", "check", "main"]


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
    parser = argparse.ArgumentParser(description="Store a model and check that it loads.")
    parser.add_argument("--source", required=True, type=Path, help="model directory")
    parser.add_argument("--incoming", required=True, type=Path, help="empty folder in the store")
    parser.add_argument("--store", required=True, type=Path, help="the model store")
    parser.add_argument("--cache-dir", required=True, type=Path, help="ONNX export cache")
    parser.add_argument("--max-bytes", required=True, type=int, help="bound on the model's size")
    parser.add_argument("--max-files", required=True, type=int, help="bound on files and folders")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = list_model_files(args.source, max_bytes=args.max_bytes, max_files=args.max_files)
        digest = copy_model(args.source, files, args.incoming, max_bytes=args.max_bytes)
    except UnusableSourceError as exc:
        return _fail(EXIT_UNUSABLE, exc.reason)
    except OSError as exc:  # writing into the store
        return _fail(EXIT_NOT_STORED, f"{type(exc).__name__}: {exc}")
    try:
        report = check(args.incoming, digest, args.cache_dir)
    except ModelSourceError as exc:  # what the client may read: the model's own configuration
        return _fail(EXIT_REFUSED, exc.message)
    except Exception as exc:
        return _fail(1, f"{type(exc).__name__}: {exc}")
    try:
        stored = publish(args.incoming, args.store, digest)
    except OSError as exc:
        return _fail(EXIT_NOT_STORED, f"{type(exc).__name__}: {exc}")
    print(json.dumps({"content_hash": digest, "path": str(stored), **report}), flush=True)
    return 0


def _fail(code: int, reason: str) -> int:
    print(reason.replace("\n", " "), file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
