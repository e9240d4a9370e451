"""The energy store on disk (edge): where a job's records live, who may read them, the node lock.

Layout under the site's energy_store:
  <jobid>/                     mode 2750, owner = the job's user, group = the project's Unix group
                               (named like the Slurm account) when it exists, else the user's group
  <jobid>/<node>.lock          flock held by the one sampler of this job on this node; holds its pid
  <jobid>/<node>.{meta.json,series.bin,end.json,summary.json}, <jobid>/work.<node>.*
  accounting/<jobid>.<node>    the node's summary line for EpilogSlurmctld (2750 root:<SlurmUser group>,
                               made by the admin; files inherit the group through the setgid bit)
The store root itself is 1733 so users' own samplers can create job directories but cannot list them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import json
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import AccessError, EnergyError

DIR_MODE = 0o2750
FILE_MODE = 0o640
ACCOUNTING = "accounting"


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def owner_for(user: str | None, account: str | None) -> Owner:
    """The job user's uid and the project's gid (a Unix group named like the account), falling back to
    the user's primary group; the current process's ids when the user is unknown."""
    try:
        pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    except KeyError:
        return Owner(os.getuid(), os.getgid())
    gid = pw.pw_gid
    if account:
        with contextlib.suppress(KeyError):
            gid = grp.getgrnam(account).gr_gid
    return Owner(pw.pw_uid, gid)


def job_dir(store: Path, job_id: str) -> Path:
    if not job_id or not all(c.isalnum() or c in "_." for c in job_id):
        raise EnergyError(f"Expected a Slurm job id like 1234 or 1234_5. Got {job_id!r} instead. "
                          "Pass --job-id or run inside a job.")
    return store / job_id


def node_file(store: Path, job_id: str, node: str, suffix: str) -> Path:
    return job_dir(store, job_id) / f"{node}.{suffix}"


def _give(path: Path, owner: Owner, mode: int) -> None:
    # Only root can hand files to the job's user; a user's own sampler already owns what it writes and
    # may still move it to a project group it belongs to.
    with contextlib.suppress(PermissionError):
        os.chown(path, owner.uid if os.geteuid() == 0 else -1, owner.gid)
    os.chmod(path, mode)


def ensure_job_dir(store: Path, job_id: str, owner: Owner) -> Path:
    path = job_dir(store, job_id)
    try:
        path.mkdir(mode=0o700)
        _give(path, owner, DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise EnergyError(f"Expected the energy store {store} to exist. Got no such directory. "
                          "Ask an admin to create it (mode 1733).") from None
    except PermissionError:
        raise AccessError(f"Expected to create {path}. Got permission denied. "
                          "The energy store must be mode 1733 or the job dir made by the prolog.") from None
    return path


def write_private(path: Path, data: bytes, owner: Owner) -> None:
    """Write a whole file atomically with the record mode and owner."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    _give(tmp, owner, FILE_MODE)
    os.replace(tmp, path)


def write_json(path: Path, value: Any, owner: Owner) -> None:
    write_private(path, (json.dumps(value, sort_keys=True) + "\n").encode(), owner)


def read_json(path: Path) -> Any | None:
    """The JSON at path, None when absent; AccessError when it exists but is not ours to read."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except PermissionError:
        raise AccessError(f"Expected read access to {path}. Got permission denied. Energy records are "
                          "readable by the job's user, its project's members and admins only.") from None


def open_append(path: Path, owner: Owner) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    _give(path, owner, FILE_MODE)
    return fd


class NodeLock:
    """An exclusive flock on <jobid>/<node>.lock: whoever holds it is this node's sampler for the job."""

    def __init__(self, path: Path, owner: Owner) -> None:
        self.path = path
        self._owner = owner
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return False
            raise
        _give(self.path, self._owner, FILE_MODE)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def lock_held(path: Path) -> bool:
    """Whether some process holds the node lock now."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def lock_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except PermissionError:
        raise AccessError(f"Expected read access to {path}. Got permission denied. Energy records are "
                          "readable by the job's user, its project's members and admins only.") from None


def nodes_with_records(store: Path, job_id: str) -> list[str]:
    try:
        names = os.listdir(job_dir(store, job_id))
    except FileNotFoundError:
        return []
    except PermissionError:
        raise AccessError(f"Expected read access to the energy records of job {job_id}. Got permission "
                          "denied. They are readable by the job's user, its project and admins.") from None
    return sorted(n[: -len(".meta.json")] for n in names if n.endswith(".meta.json"))


@contextlib.contextmanager
def held(lock: NodeLock) -> Iterator[bool]:
    got = lock.acquire()
    try:
        yield got
    finally:
        if got:
            lock.release()
