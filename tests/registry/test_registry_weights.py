from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from greenroom.config import DEFAULT_MODEL_SOURCE
from greenroom.errors import ModelSourceError
from greenroom.registry.weights import (
    UNUSABLE_SOURCE,
    UnusableSourceError,
    content_hash,
    inspect_model,
    resolve_source,
)


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
    with pytest.raises(UnusableSourceError) as info:
        resolve_source(str(missing))
    assert info.value.message == UNUSABLE_SOURCE  # never the path: it is in `reason`, for logs
    assert str(missing) in info.value.reason


def test_resolve_source_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(UnusableSourceError, match="not a usable model directory") as info:
        resolve_source(str(tmp_path))
    assert "config.json" in info.value.reason


def test_resolve_source_missing_package() -> None:
    with pytest.raises(UnusableSourceError) as info:
        resolve_source("package:greenroom_no_such_package")
    assert "'greenroom_no_such_package' is not an installed package" in info.value.reason


@pytest.mark.parametrize(
    "source",
    [
        "package:",
        "package:.foo",
        "package:this.that",
        "package:os",
        "package:json",
        "/" + "a" * 300,
    ],
)
def test_resolve_source_refuses_bad_names(source: str) -> None:
    with pytest.raises(UnusableSourceError):
        resolve_source(source)


def make_package(root: Path, name: str, model_dir: Path, *, inside: bool) -> Path:
    """A package on `root` whose import would leave a marker file; its model in `model/` or in
    the package directory itself."""
    package = root / name
    shutil.copytree(model_dir, package / "model" if inside else package)
    marker = root / f"{name}.imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return package


@pytest.mark.parametrize("inside", [True, False])
def test_resolve_source_package_without_importing_it(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inside: bool
) -> None:
    name = f"greenroom_test_pkg_{'model' if inside else 'flat'}"
    package = make_package(tmp_path, name, tiny_model_dir, inside=inside)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = resolve_source(f"package:{name}")
    assert path == (package / "model" if inside else package).resolve()
    assert name not in sys.modules
    assert not (tmp_path / f"{name}.imported").exists()


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
