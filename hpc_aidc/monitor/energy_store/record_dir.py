"""Files of the energy store, read and written relative to an open directory fd: no path is followed
through a link a user planted, and every file is checked with fstat before it is trusted."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from pathlib import Path
from typing import Any

from hpc_aidc.errors import AccessError, EnergyError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at
from hpc_aidc.monitor.energy_store.layout import FILE_MODE, Owner

MAX_RECORD_BYTES = 256 << 20  # a series of 8 GPUs at 1 Hz for a month is ~60 MB
FILE_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _denied(what: str) -> AccessError:
    return AccessError(f"Expected read access to {what}. Got permission denied. Energy records are "
                       "readable by the job's user, its project's members and admins only.")


class RecordDir:
    """An open directory: every read, write and listing is relative to its fd and follows no link."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.refresh()

    def refresh(self) -> None:
        st = os.fstat(self.fd)
        self.uid = st.st_uid
        self.gid = st.st_gid
        self.mode = stat.S_IMODE(st.st_mode)
        # Opened for reading, not only as a path (O_PATH): it can be listed.
        self.readable = not fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_PATH

    @property
    def root_owned(self) -> bool:
        """Made by root and writable by nobody else: its records were written by root."""
        return self.uid == 0 and not self.mode & 0o022

    def __enter__(self) -> RecordDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def sub(self, name: str) -> RecordDir | None:
        """The subdirectory `name`, None when absent; EnergyError when it is a link or not a directory."""
        try:
            fd = _open_dir(name, self.fd)
        except FileNotFoundError:
            return None
        except PermissionError:
            raise _denied(str(self.path / name)) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise EnergyError(f"Expected {self.path / name} to be a directory. Got a link or a file. "
                                  "An admin should look at it; records there are not used.") from None
            raise
        return RecordDir(fd, self.path / name)

    def read(self, name: str, limit: int = MAX_RECORD_BYTES) -> bytes | None:
        """A regular file's bytes (at most `limit`), None when absent or not a regular file."""
        try:
            fd = os.open(name, FILE_READ_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except PermissionError:
            raise _denied(str(self.path / name)) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                return None  # a link or a FIFO where a record should be: not a record
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks, left = [], limit
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read_json(self, name: str) -> Any | None:
        raw = self.read(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None  # torn or forged: treated as absent

    def write(self, name: str, data: bytes, owner: Owner | None, mode: int = FILE_MODE) -> None:
        atomic_write_at(self.fd, name, data, mode, _ids(owner), durable=False)

    def write_json(self, name: str, value: Any, owner: Owner | None) -> None:
        self.write(name, (json.dumps(value, sort_keys=True) + "\n").encode(), owner)

    def create_append(self, name: str, owner: Owner | None) -> int:
        """A fresh append-only file (an older one under that name is replaced, never reopened)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=self.fd)
        set_owner(fd, owner, FILE_MODE)
        return fd

    def names(self) -> list[str]:
        if not self.readable:
            raise _denied(str(self.path))
        try:
            return sorted(os.listdir(self.fd))
        except PermissionError:
            raise _denied(str(self.path)) from None

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)


def _ids(owner: Owner | None) -> tuple[int, int] | None:
    if owner is None:
        return None
    # Only root can give files away; a user's own sampler may still pick a group it belongs to.
    return (owner.uid if os.geteuid() == 0 else -1, owner.gid)


def set_owner(fd: int, owner: Owner | None, mode: int) -> None:
    ids = _ids(owner)
    if ids is not None:
        with contextlib.suppress(PermissionError):
            os.fchown(fd, *ids)
    os.fchmod(fd, mode)


def _open_dir(name: str | Path, dir_fd: int | None = None) -> int:
    """A directory fd that follows no link: readable where we may list it, else O_PATH (enough to
    reach what is inside a mode 0711 directory by name)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def open_dir(path: Path) -> RecordDir | None:
    """A directory by absolute path (the admin's store root or its parents are trusted), None if absent."""
    try:
        return RecordDir(_open_dir(path), path)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise _denied(str(path)) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise EnergyError(f"Expected {path} to be a directory. Got a link or a file. "
                              "Fix the site profile's energy_store.") from None
        raise
