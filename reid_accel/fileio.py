"""Atomic file writes: a reader, or a run killed mid-write, never sees a half-written file or folder.

Everything reid-accel writes goes through here. A file or folder is written under a hidden name beside its
destination, flushed to the disk, then renamed over the destination, and the parent folder's entry is synced
too (where the OS allows), so after a crash the destination holds either the old or the new content. New files
and folders get the permissions the user's umask gives, as a plain `open` or `mkdir` would: a team can share
a run folder. On an error the hidden copy is removed and the destination keeps its previous content.
"""

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _hidden_sibling(path: Path, suffix: str) -> Path:
    """A fresh hidden name in `path`'s folder, unique across processes and threads."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)  # Windows syncs writable handles only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(folder: Path) -> None:
    """Make renames inside `folder` durable; a no-op where folders cannot be opened (Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot sync a folder
            raise
    finally:
        os.close(fd)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's `syncfs(fd)` from the C library, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def _fsync_tree(root: Path) -> None:
    """Get every file and folder below `root` onto the disk, so the renamed tree is complete there.

    On Linux one `syncfs` call flushes the whole file system: a look-alike MSMT17 folder holds 126k files, which
    a fsync each would take ~12 s to flush on an ext4 disk (~0.1 ms a call) against well under a second.
    Elsewhere each file, then each folder bottom up, is synced.
    """
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if syncfs(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), str(root))
        finally:
            os.close(fd)
        return
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_file(Path(folder, name))
        _fsync_directory(Path(folder))


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Report a failure to create the hidden copy under the destination's name, which is what the user gave."""
    try:
        yield
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary file beside `path`; it replaces `path` only if the block finishes without error.

    The block writes the temporary file by name (e.g. `save_file(tensors, tmp)`); it keeps `path`'s suffix, for
    writers that pick a format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_sibling(path, path.suffix or ".tmp")
    with _naming(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 minus the umask, like `open`
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
    try:
        yield tmp
        # Writers that replace the file by their own temporary copy (safetensors' `save_file`) leave it 0o600.
        os.chmod(tmp, mode)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; it becomes `path` only if the block finishes without error.

    Every file below the staging folder is synced before the rename. `path` may be missing or an empty folder.

    Raises:
        FileExistsError: `path` holds something (e.g. another process renamed its own folder there first); the
            staging folder is removed and `path` is left as it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(path, ".partial")
    with _naming(path):
        staging.mkdir()  # unlike `tempfile.mkdtemp` (0o700), keeps the umask's permissions for the final folder
    try:
        yield staging
        _fsync_tree(staging)
        try:
            os.replace(staging, path)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise FileExistsError(errno.EEXIST, "already exists and is not an empty folder", str(path)) from error
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _fsync_directory(path.parent)


def share_as_umask(folder: str | os.PathLike) -> None:
    """Give every file below `folder` the permissions a plain `open` gets under the umask.

    For folders filled by writers that bypass `atomic_path` (accelerate's `save_state` writes the weights with
    safetensors, which renames its own 0o600 temporary file into place).
    """
    folder = Path(folder)
    probe = _hidden_sibling(folder / "umask", ".probe")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink()
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a writer's temporary file, renamed meanwhile
                os.chmod(Path(parent, name), mode)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
