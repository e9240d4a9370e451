"""The user folder `<job_root>/<user>`, and the folders hpcai makes inside it.

In a shared job root, whoever makes `<job_root>/<user>` first owns that user's job tree: a folder another
user made there (or anything inside it) could swap a job's pickled call and run code as its owner. So users'
folders are made by root (`hpcai admin user-folders`, install/user_folders.py) and a user makes their own
only in a job root that is theirs. A folder that is not its user's alone (another owner, writable by others,
a symbolic link) is refused with one line, and the advice never leaves a component another user made: it
is moved away and made anew by root. Inside it, every folder hpcai uses must be the user's alone too
(`claim_folder`)."""

from __future__ import annotations

import errno
import os
import pwd
import shlex
import stat
from pathlib import Path

from hpc_aidc.errors import AccessError
from hpc_aidc.ids import current_user

# The user folder: created like this, refused when others can write to it.
USER_FOLDER_MODE = 0o750
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _folder_refusal(user_dir: Path, st: os.stat_result | None, user: str) -> AccessError | None:
    """Why `user_dir` (as lstat saw it) is not a folder hpcai may submit into, or None if it is."""
    where = shlex.quote(str(user_dir))
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(user_dir)
        except OSError:
            target = "?"
        return AccessError(
            f"Expected the job directory {user_dir} to be a directory of yours. Got a symbolic link to "
            f"{target!r} instead. {_remake(user)}"
        )
    if not stat.S_ISDIR(st.st_mode):
        return AccessError(
            f"Expected the job directory {user_dir} to be a directory. Got a file instead. Move it away "
            f"(`mv {where} {shlex.quote(str(user_dir) + '.old')}`) and submit again."
        )
    if st.st_uid != os.getuid():
        return AccessError(
            f"Expected the job directory {user_dir} to be owned by you ({user}). Got owner {_owner(st.st_uid)!r} "
            f"instead. {_remake(user)}"
        )
    if st.st_mode & _WRITABLE_BY_OTHERS:
        who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit)
        return AccessError(
            f"Expected the job directory {user_dir} to be writable by you alone. Got mode "
            f"{stat.S_IMODE(st.st_mode):04o} (writable by {who}) instead. Run `chmod go-w {where}`."
        )
    return None


def _make_own(user_dir: Path, user: str, hint: str) -> bool:
    """Make the user's folder where that is safe: in a job root that is the user's own (root's, for root).
    In a shared one only root makes users' folders: a user who could make their own could make another's."""
    try:
        root = os.stat(user_dir.parent)
    except FileNotFoundError:
        root = None
    except OSError as exc:
        raise AccessError(f"Expected to reach the job root {user_dir.parent}. Got {exc.strerror!r} instead. {hint}") \
            from None
    if root is not None and root.st_uid != os.getuid():
        raise AccessError(
            f"Expected your job directory {user_dir}. Got none: in a shared job root, root makes each user's. "
            f"Ask your admins to run `hpcai admin user-folders {shlex.quote(user)}`."
        )
    try:
        if root is None:
            user_dir.parent.mkdir(parents=True, mode=0o750)  # a job root of this user's own making
        os.mkdir(user_dir, 0o700)  # private until checked, then USER_FOLDER_MODE
    except FileExistsError:
        return False
    except OSError as exc:
        raise AccessError(f"Expected to create the job directory {user_dir}. Got {exc.strerror!r} instead. {hint}") \
            from None
    return True


def claim_folder(folder: Path) -> None:
    """Make `folder` (inside the user's own folder), or accept it only when it is a directory of this user
    that nobody else may write: never a folder, or a link, that someone else put there."""
    try:
        os.mkdir(folder, 0o750)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise AccessError(f"Expected to create {folder}. Got {exc.strerror!r} instead. Free space there or ask your "
                          "admins.") from None
    refusal = _folder_refusal(folder, os.lstat(folder), current_user())
    if refusal is not None:
        raise refusal


def check_private_output(out: Path, flag: str) -> None:
    """An output folder a job of this user reads back what it wrote in (an inference run's plan names the
    model the tasks load): it, when it exists, must be this user's alone, and no folder above it may let
    another user swap it (owned by root or this user; writable by others only with the sticky bit)."""
    me = os.getuid()
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    if st is not None:
        refusal = _folder_refusal(out, st, current_user())
        if refusal is not None:
            raise AccessError(f"{flag}: {refusal}")
    for parent in out.parents:
        try:
            pst = os.lstat(parent)
        except FileNotFoundError:
            continue
        foreign = pst.st_uid not in (0, me)
        open_to_others = pst.st_mode & _WRITABLE_BY_OTHERS and not pst.st_mode & stat.S_ISVTX
        if open_to_others or (foreign and pst.st_mode & _WRITABLE_BY_OTHERS):
            raise AccessError(
                f"Expected every folder above {flag} {out} to keep other users from swapping it. Got {parent} "
                f"(owner {_owner(pst.st_uid)!r}, mode {stat.S_IMODE(pst.st_mode):04o}) instead. Pick an output "
                "under a folder of yours that only you can write."
            )


def _remake(user: str) -> str:
    # never "chown it": what another user made inside would stay theirs
    return (f"Ask your admins to move it away and make it anew (`hpcai admin user-folders {shlex.quote(user)} "
            "--repair`).")


def prepare_user_folder(user_dir: Path) -> None:
    """Make sure `<job_root>/<user>` is a directory of the current user that nobody else can write to,
    creating it (0750) when missing where that is safe (`_make_own`). Anything else (another owner,
    group/world-writable, a symlink) is refused with one line that says how to fix it. Never lists the
    folder: a submission costs the same whatever the number of past jobs."""
    user = current_user()
    hint = "Check the site profile's job_root (it must be shared, and reachable by users)."
    created = False
    try:
        os.lstat(user_dir)
    except FileNotFoundError:
        created = _make_own(user_dir, user, hint)
    except OSError as exc:
        raise AccessError(f"Expected to reach the job directory {user_dir}. Got {exc.strerror!r} instead. {hint}") \
            from None
    # O_NOFOLLOW: a symlink put in place of the folder is refused, never followed; fstat checks what
    # was opened, so a swap between the check and the open cannot pass.
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(user_dir, flags)
    except OSError as exc:
        try:
            seen: os.stat_result | None = os.lstat(user_dir)
        except OSError:
            seen = None
        refusal = _folder_refusal(user_dir, seen, user)
        if refusal is not None:
            raise refusal from None
        reason = "a symbolic link" if exc.errno == errno.ELOOP else repr(exc.strerror)
        raise AccessError(f"Expected to open the job directory {user_dir}. Got {reason} instead. {hint}") from None
    try:
        refusal = _folder_refusal(user_dir, os.fstat(fd), user)
        if refusal is not None:
            raise refusal
        if created:
            os.fchmod(fd, USER_FOLDER_MODE)  # exactly 0750, whatever the umask
    finally:
        os.close(fd)
