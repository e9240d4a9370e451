"""Detaching the prolog's sampler (edge): slurmd kills the prolog's process group once the prolog
exits, so the sampler must be in its own session by then, and the job's records must exist before the
job's user can act. The parent returns only when the child says so (or has ended, or after a timeout)."""

from __future__ import annotations

import contextlib
import os
import select
import time


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
    to `log_path` (opened without following a link), gets the Detached to call ready() on."""
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
    if log_path:
        with contextlib.suppress(OSError):
            out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    os.dup2(out, 1)
    os.dup2(out, 2)
    return Detached(w)
