"""The content-addressed model store, `<data dir>/models/<content hash>/`.

Registration copies a model directory's files here, so that what is served is what was hashed even
if the source changes later. The copy reads the source as data, inside its directory: the listing
refuses links that leave it (or name a folder), anything but regular files and folders, and more
files or bytes than the bounds allow, before any file is read; the copy then opens every file
without following links and counts the bytes it really reads. Files are 0600, folders 0700.

A stored model is written to `.incoming-*` and renamed to its hash once verified. It stays while a
model row or any revision row (a retired revision may be restarted by a rollback) names its hash;
`remove_unreferenced` removes the others (`greenroom.registry.flows.collect_unreferenced` tells it
which rows name what). A registration pins the hash it stored (`.pins/`) until its transaction
ends, so that a collection running meanwhile keeps it; both take `.lock`.

Files and folders only: this module reads no table.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import event
from sqlalchemy.orm import Session

from greenroom.registry.weights import UnusableSourceError, content_hash
from greenroom.store.db import ensure_private_dir

log = logging.getLogger("greenroom.registry.store")

STORE_DIR = "models"
INCOMING_PREFIX = ".incoming-"
TRASH_PREFIX = ".trash-"
PINS_DIR = ".pins"
LOCK_FILE = ".lock"
REQUIRED_FILES = ("config.json", "tokenizer.json")
# The API process parses these files (the registry reads the configs, the router loads the
# tokenizer), so each one is bounded on its own, well below the model's bound.
MAX_JSON_BYTES = 64 * 1024 * 1024
# A pin outlives its registration's transaction only when the process died; an `.incoming-`
# folder outlives its registration likewise.
STALE_S = 24 * 3600.0
_CHUNK = 1 << 20
_HASH_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelFile:
    """A file of a model directory: its name (what is hashed and stored) and where its bytes are
    (itself, or for a link, the file inside the directory that the link names)."""

    name: tuple[str, ...]
    target: tuple[str, ...]
    size: int

    @property
    def relative_path(self) -> str:
        return "/".join(self.name)


def store_dir(data_dir: Path) -> Path:
    return data_dir / STORE_DIR


def ensure_store(root: Path) -> Path:
    ensure_private_dir(root)
    ensure_private_dir(root / PINS_DIR)
    return root


# ----- listing a source ----------------------------------------------------------------------


def list_model_files(root: Path, *, max_bytes: int, max_files: int) -> list[ModelFile]:
    """Every file of the model directory `root`, sorted by name, from metadata alone (no file is
    opened); UnusableSourceError says why the directory cannot be stored."""
    try:
        return _list(root, max_bytes=max_bytes, max_files=max_files)
    except OSError as exc:
        raise UnusableSourceError(f"{root}: {exc}") from None


def _list(root: Path, *, max_bytes: int, max_files: int) -> list[ModelFile]:
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        raise UnusableSourceError(f"{root} is not a directory")
    files: list[ModelFile] = []
    entries = total = 0
    pending: list[tuple[str, ...]] = [()]
    while pending:
        folder = pending.pop()
        with os.scandir(root.joinpath(*folder)) as listing:
            for entry in listing:
                entries += 1
                if entries > max_files:
                    raise UnusableSourceError(f"{root} has more than {max_files} files and folders")
                name = (*folder, entry.name)
                _check_name(root, name)
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(name)
                    continue
                target = name
                if stat.S_ISLNK(info.st_mode):
                    target, info = _link_target(root, name)
                if not stat.S_ISREG(info.st_mode):
                    raise UnusableSourceError(f"{_show(root, name)} is not a regular file")
                if name[-1].endswith(".json") and info.st_size > MAX_JSON_BYTES:
                    raise UnusableSourceError(
                        f"{_show(root, name)} is larger than {MAX_JSON_BYTES} bytes"
                    )
                total += info.st_size
                if total > max_bytes:
                    raise UnusableSourceError(f"{root} holds more than {max_bytes} bytes")
                files.append(ModelFile(name=name, target=target, size=info.st_size))
    names = {file.name for file in files}
    for required in REQUIRED_FILES:
        if (required,) not in names:
            raise UnusableSourceError(f"{root} has no {required}")
    return sorted(files, key=lambda file: file.name)


def _check_name(root: Path, name: tuple[str, ...]) -> None:
    try:
        name[-1].encode()
    except UnicodeEncodeError:
        raise UnusableSourceError(f"{_show(root, name)!r} is not a UTF-8 name") from None


def _link_target(root: Path, name: tuple[str, ...]) -> tuple[tuple[str, ...], os.stat_result]:
    """Where a link inside the directory leads: a regular file inside it, or refused."""
    target = Path(os.path.realpath(root.joinpath(*name)))
    if target == root or not target.is_relative_to(root):
        raise UnusableSourceError(f"{_show(root, name)} links out of the directory")
    info = os.lstat(target)  # a dangling link: FileNotFoundError
    if not stat.S_ISREG(info.st_mode):
        raise UnusableSourceError(f"{_show(root, name)} links to something else than a file")
    return target.relative_to(root).parts, info


def _show(root: Path, name: tuple[str, ...]) -> str:
    return str(root.joinpath(*name))


# ----- copying into the store ----------------------------------------------------------------


def copy_model(root: Path, files: list[ModelFile], dest: Path, *, max_bytes: int) -> str:
    """Copy `files` of `root` into the empty folder `dest`, hashing what is read (the hash of
    `content_hash`), then verify the copy against that hash; the hash."""
    digest = hashlib.sha256()
    total = 0
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise UnusableSourceError(f"{root}: {exc}") from None
    try:
        for file in files:
            digest.update(file.relative_path.encode())
            digest.update(b"\0")
            _make_folders(dest, file.name[:-1])
            with (
                _open_inside(root, root_fd, file.target) as source,
                _create(dest.joinpath(*file.name)) as copy,
            ):
                while chunk := _read(root, file, source):
                    total += len(chunk)
                    if total > max_bytes:
                        raise UnusableSourceError(f"{root} grew past {max_bytes} bytes")
                    digest.update(chunk)
                    copy.write(chunk)
                copy.flush()
                os.fsync(copy.fileno())
    finally:
        os.close(root_fd)
    stored = digest.hexdigest()
    if content_hash(dest) != stored:
        raise OSError(f"the copy in {dest} does not match the hash of what was read")
    return stored


@contextlib.contextmanager
def _open_inside(root: Path, root_fd: int, parts: tuple[str, ...]) -> Iterator[BinaryIO]:
    """Open a regular file below `root_fd` without following any link (one swapped in after the
    listing is refused) and without blocking (a FIFO swapped in is refused, not waited on)."""
    opened: list[int] = []
    try:
        folder_fd = root_fd
        for part in parts[:-1]:
            folder_fd = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder_fd
            )
            opened.append(folder_fd)
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError as exc:
        raise UnusableSourceError(
            f"{_show(root, parts)} changed since it was listed: {exc}"
        ) from None
    finally:
        for folder in opened:
            os.close(folder)
    handle = os.fdopen(fd, "rb")
    with handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise UnusableSourceError(f"{_show(root, parts)} is not a regular file any more")
        yield handle


def _read(root: Path, file: ModelFile, source: BinaryIO) -> bytes:
    try:
        return source.read(_CHUNK)
    except OSError as exc:
        raise UnusableSourceError(f"{_show(root, file.target)} cannot be read: {exc}") from None


def _make_folders(dest: Path, folder: tuple[str, ...]) -> None:
    for depth in range(1, len(folder) + 1):
        (dest.joinpath(*folder[:depth])).mkdir(mode=0o700, exist_ok=True)


def _create(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def publish(incoming: Path, root: Path, digest: str) -> Path:
    """Pin `digest`, then rename the verified copy `incoming` to `<root>/<digest>` (atomic; when
    that exists already, it holds the same files and the copy is dropped); the stored path."""
    final = root / digest
    with _locked(root, exclusive=False):
        (root / PINS_DIR).mkdir(mode=0o700, exist_ok=True)
        _touch(pin_path(root, digest, incoming.name))
        try:
            os.rename(incoming, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(incoming, ignore_errors=True)
    return final


# ----- pins: what a registration stored, until its transaction ends --------------------------


def pin_path(root: Path, digest: str, incoming_name: str) -> Path:
    return root / PINS_DIR / f"{digest}.{incoming_name}"


def unpin(pin: Path | None) -> None:
    if pin is not None:
        with contextlib.suppress(OSError):
            pin.unlink()


def unpin_when_done(db_session: Session, pin: Path | None) -> None:
    """Drop the pin once the session's transaction commits (the row then names the hash) or
    rolls back (the stored copy is then unreferenced: the next collection removes it)."""
    if pin is None:
        return
    event.listen(db_session, "after_commit", lambda _: unpin(pin), once=True)
    event.listen(db_session, "after_rollback", lambda _: unpin(pin), once=True)


def _touch(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _pinned(root: Path) -> set[str]:
    """The hashes pinned now; pins left by a process that died are removed."""
    pinned: set[str] = set()
    with contextlib.suppress(FileNotFoundError), os.scandir(root / PINS_DIR) as pins:
        for pin in pins:
            if _age_s(pin) > STALE_S:
                unpin(Path(pin.path))
            else:
                pinned.add(pin.name.split(".", 1)[0])
    return pinned


# ----- collecting what nothing references ----------------------------------------------------


def remove_unreferenced(data_dir: Path, *, referenced: Callable[[], Iterable[str]]) -> list[str]:
    """Remove the stored models whose hash `referenced()` does not name (it is read under the
    store's lock, after the pins), and leftovers of registrations and collections that died;
    the hashes removed. A stored path names its hash by its last part."""
    root = store_dir(data_dir)
    if not root.is_dir():
        return []
    removed: list[str] = []
    with _locked(root, exclusive=True):
        pinned = _pinned(root)
        kept = pinned | hash_names(referenced())
        with os.scandir(root) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(TRASH_PREFIX) or (
                    name.startswith(INCOMING_PREFIX) and _age_s(entry) > STALE_S
                ):
                    shutil.rmtree(entry.path, ignore_errors=True)
                elif _HASH_NAME.fullmatch(name) and name not in kept:
                    _remove(root, name)
                    removed.append(name)
    if removed:
        log.info("removed %d unreferenced stored model(s): %s", len(removed), ", ".join(removed))
    return sorted(removed)


def hash_names(values: Iterable[str]) -> set[str]:
    """Each value (a content hash or a stored path) and its path's last part, so that a row is
    honoured even when the data dir was reached by another path."""
    names: set[str] = set()
    for value in values:
        names.update({value, os.path.basename(os.path.normpath(value))})
    return names


def _remove(root: Path, name: str) -> None:
    """Rename first, so that a removal cut short never leaves a partial `<hash>` folder."""
    trash = root / f"{TRASH_PREFIX}{name}.{uuid.uuid4().hex}"
    os.rename(root / name, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _locked(root: Path, *, exclusive: bool) -> Iterator[None]:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _age_s(entry: os.DirEntry[str]) -> float:
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0
