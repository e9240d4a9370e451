"""The energy store on disk (edge): where a job's records live, who may read them, the node lock.

Layout under the site's energy_store (see SECURITY.md for who trusts what):
  <jobid>/                       the job; root:<project group> 0750 when the prolog made it (trusted),
                                 owned by the job's user on sites where jobs sample themselves
  <jobid>/r<N>/                  run N of the job (Slurm's restart count: a requeued job runs again)
  <jobid>/r<N>/<node>.lock       flock held by the one sampler of this run on this node; holds its pid
  <jobid>/r<N>/<node>.{meta.json,series.bin,end.json,summary.json}
  <jobid>/r<N>/work/             the job's user reports work here (tokens, samples): work.<node>.<pid>
  accounting/                    drop box for EpilogSlurmctld (root:<SlurmUser group> 2770, made by the
                                 admin): <jobid>.r<N>.<node> node lines, <jobid>.r<N> run lines, spool/
  .quarantine.<jobid>.<ns>       a job directory root found made by someone else, set aside unused

Everything is opened relative to a directory fd with O_NOFOLLOW and checked with fstat, so root never
follows a link a user planted and never reads a file a user swapped in. A store root that is not
root-owned, or that others may write without the sticky bit, is refused."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import json
import os
import pwd
import re
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import AccessError, EnergyError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at
from hpc_aidc.ids import parse_job_id

DIR_MODE = 0o2750
FILE_MODE = 0o640
WORK_DIR = "work"
ACCOUNTING = "accounting"
SPOOL = "spool"
MAX_RECORD_BYTES = 256 << 20  # a series of 8 GPUs at 1 Hz for a month is ~60 MB
_RUN = re.compile(r"^r([0-9]{1,6})$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_FILE_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def owner_for(user: str | None, account: str | None) -> Owner:
    """The job user's uid and the project's gid (a Unix group named like the account, when the user is
    in it), falling back to the user's primary group; the current process's ids when the user is
    unknown."""
    try:
        pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    except KeyError:
        return Owner(os.getuid(), os.getgid())
    gid = pw.pw_gid
    if account:
        with contextlib.suppress(KeyError):
            group = grp.getgrnam(account)
            if pw.pw_name in group.gr_mem or group.gr_gid == pw.pw_gid:
                gid = group.gr_gid
    return Owner(pw.pw_uid, gid)


def run_of(environ: Mapping[str, str]) -> int:
    """The job's run: Slurm's restart count (prolog/epilog: SLURM_JOB_RESTART_COUNT; job steps:
    SLURM_RESTART_COUNT, set once the job was requeued)."""
    for key in ("SLURM_JOB_RESTART_COUNT", "SLURM_RESTART_COUNT"):
        value = environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def check_node(node: str) -> str:
    if not _NODE.match(node):
        raise EnergyError(f"Expected a node name of letters, digits, '_', '.', '-'. Got {node!r} instead. "
                          "Pass --node or run inside a job.")
    return node


def run_name(run: int) -> str:
    return f"r{run}"


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
            fd = os.open(name, _FILE_READ_FLAGS, dir_fd=self.fd)
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
        _set_owner(fd, owner, FILE_MODE)
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


def _set_owner(fd: int, owner: Owner | None, mode: int) -> None:
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


def open_store(root: Path) -> RecordDir:
    """The store root, checked: root-owned; if others may write it, only with the sticky bit."""
    found = open_dir(root)
    if found is None:
        raise EnergyError(f"Expected the energy store {root} to exist. Got no such directory. "
                          "Ask an admin to create it (root-owned, mode 0711, or 1733 where jobs sample "
                          "themselves).")
    if found.uid != 0 and found.uid != os.geteuid():
        found.close()
        raise EnergyError(f"Expected the energy store {root} to be owned by root. Got uid {found.uid}. "
                          f"Ask an admin to run `chown root {root}`.")
    if found.mode & 0o002 and not found.mode & stat.S_ISVTX:
        found.close()
        raise EnergyError(f"Expected the energy store {root} to be mode 0711 or 1733. Got "
                          f"{found.mode:o}: anyone could replace another job's records. Ask an admin to "
                          f"run `chmod 1733 {root}`.")
    return found


@contextlib.contextmanager
def opened(root: Path, *names: str) -> Iterator[RecordDir | None]:
    """store/<names...> opened step by step (no links), None when any step is absent."""
    current: RecordDir | None = open_store(root)
    try:
        for name in names:
            assert current is not None
            nxt = current.sub(name)
            current.close()
            current = nxt
            if current is None:
                break
        yield current
    finally:
        if current is not None:
            current.close()


def runs(root: Path, job_id: str) -> list[int]:
    """The runs a job has records of, oldest first."""
    with opened(root, parse_job_id(job_id)) as job:
        if job is None:
            return []
        return sorted(int(m.group(1)) for n in job.names() if (m := _RUN.match(n)))


def nodes_with_records(run_dir: RecordDir) -> list[str]:
    return sorted(n[: -len(".meta.json")] for n in run_dir.names() if n.endswith(".meta.json"))


def _mkdir_owned(parent: RecordDir, name: str, uid: int, gid: int, mode: int) -> RecordDir:
    """`name` under `parent`, made now or already there; one made now gets uid/gid/mode on its fd."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent.fd)
        made = True
    except FileExistsError:
        made = False
    found = parent.sub(name)
    if found is None:
        raise EnergyError(f"Expected {parent.path / name} to stay. Got it removed under us. Retry.")
    if made and found.uid == os.geteuid():
        _set_owner(found.fd, Owner(uid, gid), mode)
        found.refresh()
    return found


def prepare_run_as_root(root: Path, job_id: str, run: int, owner: Owner) -> tuple[RecordDir, list[str]]:
    """The run directory of a job, made by root (the prolog) before the job's user can act. A job
    directory that is already there but not root's own (planted in a 1733 store, a link, a file) is
    renamed aside and a fresh one made; the notes say what was set aside, for the admin's log."""
    notes: list[str] = []
    name = parse_job_id(job_id)
    with open_store(root) as store:
        for _ in range(3):
            try:
                job = _mkdir_owned(store, name, 0, owner.gid, 0o750)
            except EnergyError:
                job = None
            if job is not None and job.root_owned:
                break
            if job is not None:
                job.close()
            aside = f".quarantine.{name}.{time.time_ns()}"
            try:
                os.rename(name, aside, src_dir_fd=store.fd, dst_dir_fd=store.fd)
            except FileNotFoundError:
                continue
            notes.append(f"set aside {root / name} (not made by root) as {root / aside}")
        else:
            raise EnergyError(f"Expected to create {root / name} as root. Got someone re-creating it. "
                              "The energy store must be mode 0711 where the prolog samples jobs.")
        with job:
            run_dir = _mkdir_owned(job, run_name(run), 0, owner.gid, 0o750)
        if not run_dir.root_owned:  # only root writes inside a root-owned job dir: cannot happen
            run_dir.close()
            raise EnergyError(f"Expected {run_dir.path} to be root's own. Got uid {run_dir.uid}.")
        work = _mkdir_owned(run_dir, WORK_DIR, owner.uid, owner.gid, 0o750)
        work.close()
        return run_dir, notes


def prepare_run_as_user(root: Path, job_id: str, run: int, owner: Owner) -> RecordDir | None:
    """The run directory for a job's own sampler (sites without the prolog); None when root (the
    prolog) already made the job's directory, so the job is measured by root and need not measure
    itself."""
    name = parse_job_id(job_id)
    with open_store(root) as store:
        try:
            job = _mkdir_owned(store, name, owner.uid, owner.gid, DIR_MODE)
        except PermissionError:
            return None  # the store is not writable for users: the prolog samples every job
        with job:
            if job.uid == 0:
                return None
            if job.uid != os.geteuid():
                raise AccessError(f"Expected the energy records of job {job_id} to be yours or root's. Got "
                                  f"{job.path} owned by uid {job.uid}. Ask an admin to remove it.")
            run_dir = _mkdir_owned(job, run_name(run), owner.uid, owner.gid, DIR_MODE)
        with run_dir:
            work = _mkdir_owned(run_dir, WORK_DIR, owner.uid, owner.gid, DIR_MODE)
            work.close()
            return RecordDir(os.dup(run_dir.fd), run_dir.path)


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
        _set_owner(fd, self._owner, FILE_MODE)
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
        fd = os.open(f"{check_node(node)}.lock", _FILE_READ_FLAGS, dir_fd=run_dir.fd)
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


def accounting_dir(root: Path) -> RecordDir | None:
    """The accounting drop box, None where the site stores no energy in Slurm accounting."""
    with open_store(root) as store:
        return store.sub(ACCOUNTING)
