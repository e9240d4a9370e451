"""Small filesystem helpers: the one atomic write (relative to a directory fd, never following a link),
checksums, a file lock.

Code that runs as root writes into directories a user may reach, so every write here is relative to an
open directory fd, creates its temporary file with O_EXCL | O_NOFOLLOW, sets owner and mode on the fd,
and renames within that directory: a link planted under any of those names is replaced, never followed."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy.typing as npt

_BLOCK = 8 << 20
# Flags for opening a directory that must not be a link.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def atomic_write_at(dir_fd: int, name: str, data: bytes, mode: int = 0o644,
                    owner: tuple[int, int] | None = None, durable: bool = True) -> None:
    """Write `name` in the directory `dir_fd` whole or not at all: a fresh temporary file (O_EXCL,
    O_NOFOLLOW), chown/chmod on its fd, fsync, rename over `name`, fsync the directory."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"expected a plain file name, got {name!r}")
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if durable:
        # The rename itself must survive a crash too (a checkpoint's `latest` pointer, a manifest).
        os.fsync(dir_fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, DIR_FLAGS)
    try:
        atomic_write_at(dir_fd, path.name, data, mode)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: Path, array: npt.NDArray[Any]) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock held for the block; released by the kernel if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
