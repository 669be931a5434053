"""Resolving a model source, hashing its weights and reading what the model produces.

A source is a local directory in sentence-transformers format, or `package:<import name>` of an
installed Python package that ships one (its `model` folder, else the package directory itself).
A package is found, never imported: resolving a source runs none of its code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from greenroom.errors import ModelSourceError

PACKAGE_PREFIX = "package:"
PACKAGE_MODEL_DIR = "model"
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
# One sentence whatever the reason, so that an answer never tells whether some path exists.
UNUSABLE_SOURCE = (
    "The model source is not a usable model directory: give a local sentence-transformers "
    "directory (config.json, tokenizer.json and weights, within the server's size and file-count "
    "bounds, with no links leaving it) or `package:<name>` of an installed package that ships one."
)
# How the load check child (`python -m greenroom.registry.check`) exits when it does not store a
# model; the registry service reads them without importing the child (which loads an engine).
EXIT_UNUSABLE = 2  # the source is not a usable model directory
EXIT_NOT_STORED = 3  # the model store could not take the copy
EXIT_REFUSED = 4  # the model's configuration is not supported (the reason is for the client)


class UnusableSourceError(ModelSourceError):
    """A source that is not a usable model directory. The client gets `UNUSABLE_SOURCE`;
    `reason` (which may name paths) is for the server log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(UNUSABLE_SOURCE)
        self.reason = reason


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
    """The model directory of a source (links resolved); UnusableSourceError when there is none."""
    if source.startswith(PACKAGE_PREFIX):
        return _package_model_path(source.removeprefix(PACKAGE_PREFIX))
    try:
        path = Path(os.path.realpath(os.path.expanduser(source)))
        usable = _holds_model(path)
    except (OSError, ValueError) as exc:  # too long a name, a NUL, no access, ...
        raise UnusableSourceError(f"{source!r}: {exc}") from None
    if not usable:
        raise UnusableSourceError(f"{source!r} is not a directory with a config.json")
    return path


def _holds_model(path: Path) -> bool:
    """Whether `path` is a directory with a config.json; OSError when it cannot be looked at."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode) and stat.S_ISREG(
            os.stat(path / "config.json").st_mode
        )
    except (FileNotFoundError, NotADirectoryError):
        return False


def _package_model_path(import_name: str) -> Path:
    """The model directory an installed package ships, found by `find_spec` on a top-level name
    (which imports nothing: a dotted name would import its parents)."""
    if not import_name.isidentifier():
        raise UnusableSourceError(f"package {import_name!r} is not a top-level import name")
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError, OSError) as exc:
        raise UnusableSourceError(f"package {import_name!r} cannot be found: {exc}") from None
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UnusableSourceError(f"{import_name!r} is not an installed package")
    for location in locations:
        package_dir = Path(location)
        for candidate in (package_dir / PACKAGE_MODEL_DIR, package_dir):
            try:
                if _holds_model(candidate):
                    return Path(os.path.realpath(candidate))
            except OSError:
                continue
    raise UnusableSourceError(f"package {import_name!r} ships no model directory")


def content_hash(path: Path) -> str:
    """sha256 over the sorted relative paths and bytes of every file under the model directory."""
    digest = hashlib.sha256()
    files = sorted(
        (p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).parts
    )
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
        raise ModelSourceError("The model has no tokenizer.json (a fast tokenizer).")
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
    except OSError as exc:
        raise ModelSourceError(f"The model's {path.name} cannot be read: {exc.strerror}.") from exc
    except ValueError as exc:
        raise ModelSourceError(f"The model's {path.name} is not valid JSON: {exc}.") from exc
