from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from greenroom.config import DEFAULT_MODEL_SOURCE
from greenroom.errors import ModelSourceError
from greenroom.registry.weights import content_hash, inspect_model, resolve_source


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model that a test may change."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_resolve_source_directory(tiny_model_dir: Path) -> None:
    assert resolve_source(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_resolve_source_package(default_model_dir: Path) -> None:
    path = resolve_source(DEFAULT_MODEL_SOURCE)
    assert path == default_model_dir
    assert (path / "config.json").is_file()


def test_resolve_source_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelSourceError, match="is not a directory on disk") as info:
        resolve_source(str(missing))
    assert str(missing) in info.value.message


def test_resolve_source_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"has no config\.json"):
        resolve_source(str(tmp_path))


def test_resolve_source_missing_package() -> None:
    with pytest.raises(ModelSourceError, match="'greenroom_no_such_package' is not installed"):
        resolve_source("package:greenroom_no_such_package")


def test_content_hash_is_stable(tiny_model_dir: Path) -> None:
    first = content_hash(tiny_model_dir)
    assert first == content_hash(tiny_model_dir)
    assert re.fullmatch(r"[0-9a-f]{64}", first)


def test_content_hash_does_not_depend_on_location(tiny_model_dir: Path, model_copy: Path) -> None:
    assert content_hash(model_copy) == content_hash(tiny_model_dir)


def test_content_hash_changes_with_one_byte(tiny_model_dir: Path, model_copy: Path) -> None:
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert content_hash(model_copy) != content_hash(tiny_model_dir)


def test_content_hash_changes_with_a_file_name(tiny_model_dir: Path, model_copy: Path) -> None:
    (model_copy / "README.md").rename(model_copy / "README.txt")
    assert content_hash(model_copy) != content_hash(tiny_model_dir)


def test_content_hash_differs_between_models(tiny_model_dir: Path, tiny_model_2_dir: Path) -> None:
    assert content_hash(tiny_model_dir) != content_hash(tiny_model_2_dir)


def test_inspect_tiny_model(tiny_model_dir: Path) -> None:
    info = inspect_model(tiny_model_dir)
    assert info.path == tiny_model_dir
    assert info.dimension == 32
    assert info.max_seq_length == 64  # sentence-transformers 6 keeps it in tokenizer_config.json
    assert info.pooling == "mean"
    assert info.normalize is True
    assert info.pad_token_id == 0
    assert info.tokenizer_file.is_file()


def test_inspect_default_model(default_model_dir: Path) -> None:
    assert not (default_model_dir / "2_Normalize").exists()  # listed in modules.json only
    info = inspect_model(default_model_dir)
    assert info.dimension == 384
    assert info.max_seq_length == 256
    assert info.pooling == "mean"
    assert info.normalize is True
    assert info.vocab_size == 30522


@pytest.mark.parametrize(
    ("pooling_config", "expected"),
    [
        ({"pooling_mode": "cls"}, "cls"),
        ({"pooling_mode": "max"}, "max"),
        ({"pooling_mode": "mean_sqrt_len_tokens"}, "mean_sqrt_len"),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, "mean_sqrt_len"),
    ],
)
def test_inspect_model_reads_pooling_mode(
    model_copy: Path, pooling_config: dict, expected: str
) -> None:
    (model_copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    assert inspect_model(model_copy).pooling == expected


def test_inspect_model_refuses_unsupported_pooling(model_copy: Path) -> None:
    (model_copy / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    with pytest.raises(ModelSourceError, match="not supported"):
        inspect_model(model_copy)


def test_inspect_model_without_normalize(model_copy: Path) -> None:
    modules_file = model_copy / "modules.json"
    modules = json.loads(modules_file.read_text())
    modules_file.write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    assert inspect_model(model_copy).normalize is False


def test_inspect_model_without_tokenizer(model_copy: Path) -> None:
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelSourceError, match=r"no tokenizer\.json"):
        inspect_model(model_copy)
