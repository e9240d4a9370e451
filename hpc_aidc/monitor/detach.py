"""Detaching the prolog's sampler (edge): slurmd kills the prolog's process group once the prolog
exits, so the sampler must be in its own session by then, and the job's records must exist before the
job's user can act. The parent returns only when the child says so (or has ended, or after a timeout)."""

from __future__ import annotations

import contextlib
import os
import select
import stat
import time
from pathlib import Path

from hpc_aidc.fsutil import DIR_FLAGS


class Detached:
    """The child's side: `ready()` tells the waiting parent that the sampler owns the node."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def ready(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, b"ok")
                os.close(self._fd)
            self._fd = None


def detach(log_path: str | None, timeout_s: float = 20.0) -> Detached:
    """Fork. The parent waits for ready() or the child's end and exits with 0 (ready, or the child
    ended cleanly) or 1; the child, in a new session with stdin from /dev/null and its output appended
    to `log_path` (see open_log; /dev/null where it is not safe), gets the Detached to call ready() on."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        deadline = time.monotonic() + timeout_s
        message = b""
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([r], [], [], left)[0]:
                break
            chunk = os.read(r, 16)
            if not chunk:
                break
            message += chunk
        os.close(r)
        if message.startswith(b"ok"):
            os._exit(0)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # neither ready nor ended: leave it, but tell the prolog
            os.write(2, b"the sampler did not report ready in time\n")
            os._exit(1)
        os._exit(os.waitstatus_to_exitcode(status) if os.waitstatus_to_exitcode(status) >= 0 else 1)
    os.close(r)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = null
    if log_path and (fd := open_log(log_path)) is not None:
        out = fd
    os.dup2(out, 1)
    os.dup2(out, 2)
    return Detached(w)


def _folder_ok(st: os.stat_result, euid: int, is_last: bool) -> bool:
    """A folder root may append through: its owner root or us, writable by nobody else (group root aside; a
    world-writable one only with the sticky bit, and never the log's own folder)."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, euid) or (mode & 0o020 and st.st_gid != 0):
        return False
    return not mode & 0o002 or (bool(mode & stat.S_ISVTX) and not is_last)


def open_log(path: str) -> int | None:
    """An fd appending to `path`, or None when that could be turned against us: the folders are opened one by one
    from / without following a link, each must be root's (or ours) and writable by nobody else (whoever may
    change a folder on the way could put a link to any file there), and the log must be a regular file
    (O_NONBLOCK: a FIFO cannot hang the prolog)."""
    parts = Path(path).parts
    if len(parts) < 2 or parts[0] != "/" or ".." in parts:
        return None
    euid = os.geteuid()
    try:
        fd = os.open("/", DIR_FLAGS)
    except OSError:
        return None
    try:
        for name in parts[1:-1]:
            if not _folder_ok(os.fstat(fd), euid, is_last=False):
                return None
            nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if not _folder_ok(os.fstat(fd), euid, is_last=True):
            return None
        log = os.open(parts[-1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                      | os.O_CLOEXEC, 0o640, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(log).st_mode):
        os.close(log)
        return None
    os.set_blocking(log, True)
    return log
