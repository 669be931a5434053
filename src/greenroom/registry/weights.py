"""Resolving a model source, hashing its weights and reading what the model produces.

A source is a local directory in sentence-transformers format, or `package:<import name>` of an
installed Python package that ships one (`get_model_path()`, else the package directory).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from greenroom.errors import ModelSourceError

PACKAGE_PREFIX = "package:"
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
# sentence-transformers >= 5.4 writes one `pooling_mode` key with these values.
POOLING_MODE_NAMES = {
    "cls": "cls",
    "cls_token": "cls",
    "mean": "mean",
    "mean_tokens": "mean",
    "max": "max",
    "max_tokens": "max",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
}
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    """What a model directory produces; read from its sentence-transformers files."""

    path: Path
    dimension: int
    max_seq_length: int
    pooling: str
    normalize: bool
    vocab_size: int
    pad_token_id: int

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"


def resolve_source(source: str) -> Path:
    """The model directory of a source; a clear error when it is not on disk."""
    if source.startswith(PACKAGE_PREFIX):
        path = _package_model_path(source.removeprefix(PACKAGE_PREFIX))
    else:
        path = Path(source).expanduser()
    if not path.is_dir():
        raise ModelSourceError(f"Model source '{source}' is not a directory on disk ({path}).")
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"Model source '{source}' has no config.json: not a sentence-transformers model."
        )
    return path.resolve()


def _package_model_path(import_name: str) -> Path:
    try:
        module = importlib.import_module(import_name)
    except ImportError as exc:
        raise ModelSourceError(
            f"Package '{import_name}' is not installed; install it or use a directory source."
        ) from exc
    get_model_path = getattr(module, "get_model_path", None)
    if callable(get_model_path):
        return Path(get_model_path())
    if module.__file__ is None:
        raise ModelSourceError(f"Package '{import_name}' has no files on disk.")
    return Path(module.__file__).parent


def content_hash(path: Path) -> str:
    """sha256 over the sorted relative paths and bytes of every file under the model directory."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def inspect_model(path: Path) -> ModelInfo:
    """Read dimension, max length, pooling and normalisation from a sentence-transformers dir.

    Pooling comes from the pooling module's own config and normalisation from `modules.json`
    (whether a Normalize module is listed); a listed module folder may be absent on disk.
    """
    config = _read_json(path / "config.json")
    modules = _read_json(path / "modules.json") if (path / "modules.json").is_file() else []
    pooling_dir = next(
        (m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling")), "1_Pooling"
    )
    pooling_config_file = path / pooling_dir / "config.json"
    pooling_config = _read_json(pooling_config_file) if pooling_config_file.is_file() else {}
    st_config_file = path / "sentence_bert_config.json"
    st_config = _read_json(st_config_file) if st_config_file.is_file() else {}
    if not (path / "tokenizer.json").is_file():
        raise ModelSourceError(f"Model at {path} has no tokenizer.json (a fast tokenizer).")
    hidden = int(config.get("hidden_size") or config.get("d_model") or 0)
    max_positions = int(config.get("max_position_embeddings", 512))
    dimension = pooling_config.get("word_embedding_dimension") or pooling_config.get(
        "embedding_dimension", hidden
    )
    return ModelInfo(
        path=path,
        dimension=int(dimension),
        max_seq_length=int(
            st_config.get("max_seq_length") or _tokenizer_max_length(path, max_positions)
        ),
        pooling=_pooling_mode(pooling_config),
        normalize=any(m.get("type", "").endswith(".Normalize") for m in modules),
        vocab_size=int(config["vocab_size"]),
        pad_token_id=int(config.get("pad_token_id") or 0),
    )


def _tokenizer_max_length(path: Path, max_positions: int) -> int:
    """sentence-transformers >= 5.4 keeps max_seq_length as the tokenizer's model_max_length,
    capped at the model's position embeddings."""
    config_file = path / "tokenizer_config.json"
    tokenizer_config = _read_json(config_file) if config_file.is_file() else {}
    model_max_length = tokenizer_config.get("model_max_length")
    if isinstance(model_max_length, int) and model_max_length > 0:
        return min(model_max_length, max_positions)
    return max_positions


def _pooling_mode(pooling_config: dict) -> str:
    if mode := pooling_config.get("pooling_mode"):
        if not isinstance(mode, str) or mode not in POOLING_MODE_NAMES:
            raise ModelSourceError(f"Pooling mode {mode!r} is not supported.")
        return POOLING_MODE_NAMES[mode]
    for key, mode in POOLING_MODES.items():
        if pooling_config.get(key):
            return mode
    return "mean"


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"Cannot read {path}: {exc}") from exc
