"""The node lock, r<N>/<node>.lock: an exclusive flock that makes one process the sampler of a run on
a node, with that process's pid in the file for whoever must stop it."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor.energy_store.layout import FILE_MODE, Owner, check_node
from hpc_aidc.monitor.energy_store.record_dir import FILE_READ_FLAGS, RecordDir, set_owner


class NodeLock:
    """An exclusive flock on r<N>/<node>.lock: whoever holds it is this node's sampler for the run."""

    def __init__(self, run_dir: RecordDir, node: str, owner: Owner) -> None:
        self._dir = run_dir
        self.name = f"{check_node(node)}.lock"
        self._owner = owner
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._dir.fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0):
                raise EnergyError(f"Expected {self._dir.path / self.name} to be a lock file of ours. Got "
                                  f"one owned by uid {st.st_uid}. Records of this run are not used.")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return False
            raise
        except EnergyError:
            os.close(fd)
            raise
        set_owner(fd, self._owner, FILE_MODE)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


@dataclass(frozen=True)
class LockState:
    held: bool
    pid: int | None
    file_uid: int | None  # who wrote the lock file (and so the pid in it)


def lock_state(run_dir: RecordDir, node: str) -> LockState:
    """Whether some process holds the node lock now, and the pid it recorded."""
    try:
        fd = os.open(f"{check_node(node)}.lock", FILE_READ_FLAGS, dir_fd=run_dir.fd)
    except FileNotFoundError:
        return LockState(False, None, None)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return LockState(False, None, None)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return LockState(False, None, None)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
        except OSError:
            held = True
        text = os.read(fd, 32).decode(errors="replace").strip()
        pid = int(text) if text.isdigit() and int(text) > 1 else None
        return LockState(held, pid, st.st_uid)
    finally:
        os.close(fd)
