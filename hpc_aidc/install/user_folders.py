"""`hpcai admin user-folders`: each user's job directory `<job_root>/<user>`, made by root (owned by the user,
0750). In a shared job root whoever makes a user's folder first owns that user's job tree, so users never
make each other's: root does, before their first submission (the dev cluster does it for every user with
a Slurm association).

Everything is reached through the job root's fd without following links. A folder that is not its user's
alone (another owner, writable by others, a link or a file in its place) is reported; with `repair` it is
moved aside (renamed `.<user>.foreign-<time>` in the job root, for the admins to inspect: nothing of it is
handed to the user) and made anew."""

from __future__ import annotations

import os
import pwd
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpc_aidc.errors import AccessError, ConfigError
from hpc_aidc.fsutil import DIR_FLAGS

FOLDER_MODE = 0o750
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class FolderOutcome:
    user: str
    path: str
    action: str     # created, ok, unsafe (reported), repaired (moved aside and made anew); with dry_run: would-*
    detail: str = ""

    def line(self) -> str:
        return f"{self.action:<10} {self.path}{'  ' + self.detail if self.detail else ''}"


def _problem(st: os.stat_result, uid: int) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != uid:
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        return f"owned by {owner}"
    if st.st_mode & _WRITABLE_BY_OTHERS:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, writable by others"
    return None


def ensure_user_folders(job_root: Path, users: Sequence[str], *, repair: bool = False,
                        dry_run: bool = False) -> list[FolderOutcome]:
    if os.geteuid() != 0 and not dry_run:
        raise AccessError("Expected to run as root (it makes folders for other users). Got a normal user. "
                          "Run it with sudo, or add --dry-run to see what it would do.")
    try:
        root_fd = os.open(job_root, DIR_FLAGS)
    except OSError as exc:
        raise ConfigError(f"Expected the job root {job_root} to be a directory (not a link). Got "
                          f"{exc.strerror!r}. Make it (root-owned, 0755) or fix the site profile's job_root.") from None
    try:
        return [_ensure(root_fd, job_root, user, repair, dry_run) for user in users]
    finally:
        os.close(root_fd)


def _ensure(root_fd: int, job_root: Path, user: str, repair: bool, dry_run: bool) -> FolderOutcome:
    if "/" in user or user in ("", ".", ".."):
        raise ConfigError(f"Expected a plain user name. Got {user!r}. Name the user as `getent passwd` does.")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"Expected a user name. Got {user!r}, which this machine does not know. Check the "
                          "name (`getent passwd NAME`).") from None
    path = str(job_root / user)
    prefix = "would-" if dry_run else ""
    try:
        st = os.stat(user, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        if not dry_run:
            _make(root_fd, user, pw)
        return FolderOutcome(user, path, prefix + "created")
    problem = _problem(st, pw.pw_uid)
    if problem is None:
        if stat.S_IMODE(st.st_mode) != FOLDER_MODE and not dry_run:
            fd = os.open(user, DIR_FLAGS, dir_fd=root_fd)
            try:
                os.fchmod(fd, FOLDER_MODE)
            finally:
                os.close(fd)
        return FolderOutcome(user, path, "ok")
    if not repair:
        return FolderOutcome(user, path, "unsafe", f"{problem}: run again with --repair to move it aside and make "
                                                   "it anew")
    aside = f".{user}.foreign-{time.strftime('%Y%m%d-%H%M%S')}"
    if not dry_run:
        os.rename(user, aside, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        _make(root_fd, user, pw)
    return FolderOutcome(user, path, prefix + "repaired", f"{problem}; moved aside to {job_root / aside}")


def _make(root_fd: int, user: str, pw: pwd.struct_passwd) -> None:
    os.mkdir(user, 0o700, dir_fd=root_fd)
    fd = os.open(user, DIR_FLAGS, dir_fd=root_fd)
    try:
        os.fchown(fd, pw.pw_uid, pw.pw_gid)
        os.fchmod(fd, FOLDER_MODE)
    finally:
        os.close(fd)


def associated_users() -> list[str]:
    """Every user with a Slurm association (one sacctmgr call), that this machine knows."""
    from hpc_aidc.slurm_client import run_slurm

    out = run_slurm(["sacctmgr", "--noheader", "--parsable2", "show", "associations", "format=user"]).stdout
    names = sorted({line.strip() for line in out.splitlines() if line.strip()})
    known = []
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        known.append(name)
    return known
