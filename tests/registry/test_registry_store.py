"""The model store: listing a source as data, copying it verified, and collecting what nothing
references."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from factories import add_embedding_model, add_live_revision

from greenroom.registry.flows import collect_unreferenced
from greenroom.registry.store import (
    MAX_JSON_BYTES,
    PINS_DIR,
    STALE_S,
    copy_model,
    ensure_store,
    list_model_files,
    pin_path,
    publish,
    unpin,
)
from greenroom.registry.weights import UnusableSourceError, content_hash
from greenroom.store.db import Store
from greenroom.workloads.models import LiveRevision, Revision

BOUNDS = {"max_bytes": 1 << 30, "max_files": 1000}


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def refusal(root: Path, **bounds: int) -> str:
    with pytest.raises(UnusableSourceError) as info:
        list_model_files(root, **{**BOUNDS, **bounds})
    return info.value.reason


def test_lists_every_file_sorted(model_copy: Path) -> None:
    files = list_model_files(model_copy, **BOUNDS)
    names = [file.relative_path for file in files]
    assert names == sorted(names) and "1_Pooling/config.json" in names
    assert sum(file.size for file in files) == sum(
        p.stat().st_size for p in model_copy.rglob("*") if p.is_file()
    )


def test_refuses_a_link_out_of_the_directory(model_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("not yours")
    (model_copy / "model.safetensors").unlink()
    (model_copy / "model.safetensors").symlink_to(outside)
    assert "links out of the directory" in refusal(model_copy)


def test_refuses_a_huge_sparse_file_behind_a_link_without_reading_it(
    model_copy: Path, tmp_path: Path
) -> None:
    sparse = tmp_path / "sparse.bin"
    with sparse.open("wb") as handle:
        handle.truncate(6 * 1024**3)
    (model_copy / "weights.bin").symlink_to(sparse)
    assert "links out" in refusal(model_copy)


@pytest.mark.parametrize("target", ["..", ".", "1_Pooling", "/etc"])
def test_refuses_links_to_folders(model_copy: Path, target: str) -> None:
    (model_copy / "folder").symlink_to(target)
    assert "links" in refusal(model_copy)


def test_refuses_a_fifo(model_copy: Path) -> None:
    os.mkfifo(model_copy / "pipe")
    assert "not a regular file" in refusal(model_copy)


def test_refuses_a_dangling_link(model_copy: Path) -> None:
    (model_copy / "gone").symlink_to(model_copy / "nothing")
    assert "No such file" in refusal(model_copy)


def test_bounds_size_and_files(model_copy: Path) -> None:
    total = sum(file.size for file in list_model_files(model_copy, **BOUNDS))
    assert list_model_files(model_copy, max_bytes=total, max_files=1000)
    assert "more than" in refusal(model_copy, max_bytes=total - 1)
    assert "more than 3 files and folders" in refusal(model_copy, max_files=3)


def test_bounds_each_json_file(model_copy: Path) -> None:
    with (model_copy / "tokenizer.json").open("r+b") as handle:
        handle.truncate(MAX_JSON_BYTES + 1)  # sparse: nothing is written
    assert "tokenizer.json is larger than" in refusal(model_copy)


@pytest.mark.parametrize("required", ["config.json", "tokenizer.json"])
def test_needs_config_and_tokenizer(model_copy: Path, required: str) -> None:
    (model_copy / required).unlink()
    assert f"no {required}" in refusal(model_copy)


def test_refuses_what_is_not_a_directory(model_copy: Path, tmp_path: Path) -> None:
    assert "not a directory" in refusal(model_copy / "config.json")
    assert "No such file" in refusal(tmp_path / "missing")


def test_copy_is_the_hash_of_the_source_and_private(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "vocab-link.txt").symlink_to("vocab.txt")  # a link inside: its file's bytes
    files = list_model_files(model_copy, **BOUNDS)
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    digest = copy_model(model_copy, files, dest, max_bytes=BOUNDS["max_bytes"])
    assert digest == content_hash(model_copy) == content_hash(dest)
    assert not (dest / "vocab-link.txt").is_symlink()
    assert {oct(p.stat().st_mode & 0o777) for p in dest.rglob("*") if p.is_file()} == {"0o600"}
    assert {oct(p.stat().st_mode & 0o777) for p in dest.rglob("*") if p.is_dir()} == {"0o700"}


def test_copy_refuses_a_link_swapped_in_after_listing(model_copy: Path, tmp_path: Path) -> None:
    files = list_model_files(model_copy, **BOUNDS)
    outside = tmp_path / "secret"
    outside.write_text("not yours")
    (model_copy / "vocab.txt").unlink()
    (model_copy / "vocab.txt").symlink_to(outside)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnusableSourceError) as info:
        copy_model(model_copy, files, dest, max_bytes=BOUNDS["max_bytes"])
    assert "changed since it was listed" in info.value.reason


def test_copy_refuses_a_file_grown_past_the_bound(model_copy: Path, tmp_path: Path) -> None:
    files = list_model_files(model_copy, **BOUNDS)
    total = sum(file.size for file in files)
    with (model_copy / "README.md").open("ab") as handle:
        handle.write(b"x")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnusableSourceError) as info:
        copy_model(model_copy, files, dest, max_bytes=total)
    assert "grew past" in info.value.reason


def stored(root: Path, model_dir: Path, name: str) -> Path:
    """A copy of `model_dir` in the store `root`, published under its hash."""
    incoming = root / f".incoming-{name}"
    incoming.mkdir()
    files = list_model_files(model_dir, **BOUNDS)
    digest = copy_model(model_dir, files, incoming, max_bytes=BOUNDS["max_bytes"])
    path = publish(incoming, root, digest)
    unpin(pin_path(root, digest, incoming.name))
    return path


def test_publish_keeps_what_is_there(model_copy: Path, tmp_path: Path) -> None:
    root = ensure_store(tmp_path / "models")
    first = stored(root, model_copy, "a")
    again = stored(root, model_copy, "b")
    assert first == again and content_hash(first) == first.name
    assert sorted(p.name for p in root.iterdir()) == sorted([".lock", PINS_DIR, first.name])


def test_collect_keeps_what_a_row_or_a_pin_names(
    store: Store, tmp_path: Path, tiny_model_dir: Path, tiny_model_2_dir: Path, model_copy: Path
) -> None:
    data_dir = tmp_path / "data"
    root = ensure_store(data_dir / "models")
    by_model = stored(root, tiny_model_dir, "a")
    by_revision = stored(root, tiny_model_2_dir, "b")
    (model_copy / "README.md").write_text("other bytes")
    pinned = stored(root, model_copy, "c")
    pin_path(root, pinned.name, "x").touch()
    junk = root / ("0" * 64)
    junk.mkdir()
    (root / ".trash-left-over").mkdir()
    old_incoming = root / ".incoming-old"
    old_incoming.mkdir()
    os.utime(old_incoming, (time.time() - STALE_S - 1,) * 2)
    with store.session_scope() as session:
        add_embedding_model(session, "a", path=by_model, content_hash=by_model.name)
        revision = add_live_revision(session, embedding_model_id="a")
        revision.model_path, revision.content_hash = str(by_revision), by_revision.name

    assert collect_unreferenced(store, data_dir) == [junk.name]
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [".lock", PINS_DIR, by_model.name, by_revision.name, pinned.name]
    )

    stale = pin_path(root, pinned.name, "x")
    os.utime(stale, (time.time() - STALE_S - 1,) * 2)
    with store.session_scope() as session:
        session.query(LiveRevision).delete()
        session.query(Revision).delete()
    assert collect_unreferenced(store, data_dir) == sorted([by_revision.name, pinned.name])
    assert not stale.exists()
    assert by_model.is_dir()


def test_collect_without_a_store(store: Store, tmp_path: Path) -> None:
    assert collect_unreferenced(store, tmp_path) == []
