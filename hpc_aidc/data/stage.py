"""Stage a packed dataset to node-local scratch, once per node per job, verified while copying.

The copy lives at <scratch>/hpcai-<user>/job-<jobid>/<name>-<hash of the source path>, so users and jobs
never share a copy. The scratch folder (e.g. /tmp) is shared by every user of the node, so the per-user
folder is created 0700 and checked on an O_NOFOLLOW fd (a folder, owned by this process's real uid, no
group/other access) before anything is read from or written into it: one planted by another user, a
link, or one others may write is refused with one line, never used. The user is the real uid's name
(`hpc_aidc.ids.current_user`), never $USER. Concurrent stagers on one node (one per rank) take a file
lock; the first copies into a temp folder, checks every shard's sha256 as it streams, and renames the
folder into place (a reader sees a complete copy or none); the others find the copy done and return at
once. Every file is read from inside the store only (`open_in_store`: no `..`, no links)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from hpc_aidc.data.spec import MANIFEST_NAME, open_in_store, read_manifest
from hpc_aidc.errors import DataError
from hpc_aidc.fsutil import file_lock
from hpc_aidc.ids import current_user

_BLOCK = 8 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def job_key(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(user, job id): the user from the real uid, the job from $SLURM_JOB_ID ("nojob" outside jobs)."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID") or "nojob"
    if job != "nojob" and not re.fullmatch(r"[0-9]{1,12}", job):
        raise DataError(f"Expected $SLURM_JOB_ID to be a Slurm job id (digits). Got {job!r} instead. "
                        "Run staging inside a job, or unset SLURM_JOB_ID.")
    return current_user(), job


def default_scratch(environ: Mapping[str, str] | None = None) -> Path:
    """The site profile's scratch path, else $TMPDIR, else /tmp."""
    env = os.environ if environ is None else environ
    try:
        from hpc_aidc.site_profile import load_site

        return load_site(None, env).scratch
    except Exception:  # no or broken site profile on this node: node-local temp is still right
        return Path(env.get("TMPDIR") or "/tmp")


def local_path(source: str | Path, scratch: str | Path | None = None,
               environ: Mapping[str, str] | None = None) -> Path:
    src = Path(source).resolve()
    user, job = job_key(environ)
    base = Path(scratch) if scratch is not None else default_scratch(environ)
    tag = hashlib.sha256(str(src).encode()).hexdigest()[:12]
    return base / f"hpcai-{user}" / f"job-{job}" / f"{src.name}-{tag}"


def _refuse(path: Path, got: str) -> DataError:
    return DataError(
        f"Expected {path} to be your own private folder (a real folder owned by you, mode 700). Got {got}. "
        "Another user may have planted it: nothing was read from or written into it. Ask an admin to remove "
        "it, or stage into a folder of your own with --scratch."
    )


def _check_scratch(base: Path) -> None:
    """The shared scratch folder must not let others swap our folder: writable by others only when sticky."""
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.stat(base)  # a site's scratch may be a link (e.g. /scratch -> /local/scratch): its target counts
    except OSError as exc:
        raise DataError(f"Expected a node-local scratch folder at {base}. Got {exc.strerror}. Pass --scratch "
                        "with a writable folder, or ask an admin to fix the site profile's scratch.") from None
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise DataError(
            f"Expected the shared scratch folder {base} to be sticky (mode 1777, like /tmp) when others may write "
            f"it. Got mode {stat.S_IMODE(st.st_mode):o}: another user could swap your folder in it. Pass "
            "--scratch with a folder of your own, or ask an admin to `chmod +t` it."
        )


def private_dir(path: Path, create: bool = True) -> bool:
    """Make sure `path` is this user's private folder: created 0700 when missing (if `create`), then
    checked on an O_NOFOLLOW fd: a folder, owned by our real uid, no group/other write. Our own folder
    with only read bits for others (made by an older version) is tightened to 0700 on the fd. False
    when it is missing and not created; DataError (one line) when it is anyone else's, a link or
    writable by others."""
    if create:
        _check_scratch(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise _refuse(path, "a folder that vanished while staging") from None
        return False
    except OSError as exc:
        link = exc.errno in (errno.ELOOP, errno.ENOTDIR)
        raise _refuse(path, "a symbolic link or not a folder" if link else str(exc.strerror)) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise _refuse(path, f"a folder owned by uid {st.st_uid}")
        if st.st_mode & 0o022:
            raise _refuse(path, f"mode {stat.S_IMODE(st.st_mode):o} (others may write it)")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return True


def staged_copy(source: str | Path, scratch: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> Path | None:
    """The complete local copy for this user and job, if one was staged in this user's private folder.
    None when there is none, or when the per-user folder is not private to us (a planted folder is never
    read from: the loader then reads the source)."""
    path = local_path(source, scratch, environ)
    try:
        if not private_dir(path.parent.parent, create=False):
            return None
    except DataError:
        return None
    return path if (path / MANIFEST_NAME).is_file() else None


def _copy_from_store(src: Path, rel: str, dst: Path, sha256: str | None = None) -> None:
    """Copy the file `rel` of the store `src` (opened inside it only) to `dst`, checking its sha256."""
    try:
        fd = open_in_store(src, rel)
    except OSError as exc:
        raise DataError(f"Expected {rel} in {src} while staging. Got {exc.strerror}. Run `hpcai data verify` "
                        "on the source and re-pack it.") from None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as fin, dst.open("wb") as fout:
        while block := fin.read(_BLOCK):
            digest.update(block)
            fout.write(block)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise DataError(f"Expected shard {rel} to match its manifest sha256 while staging. Got a mismatch "
                        "(corrupted source). Run `hpcai data verify` on the source and re-pack.")


def stage(source: str | Path, scratch: str | Path | None = None, environ: Mapping[str, str] | None = None,
          progress: Callable[[int], None] | None = None) -> tuple[Path, bool]:
    """(local copy, whether this call copied it). Raises DataError naming a bad shard, or refusing a
    per-user scratch folder that is not private to us."""
    src = Path(source)
    manifest = read_manifest(src)
    dest = local_path(src, scratch, environ)
    private_dir(dest.parent.parent)
    dest.parent.mkdir(exist_ok=True, mode=0o700)  # the job's folder, inside our private one
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if (dest / MANIFEST_NAME).is_file():
            return dest, False
        free = shutil.disk_usage(dest.parent).free
        need = sum(f.nbytes for f in manifest.files)
        if need > free:
            raise DataError(f"Expected {need >> 20} MiB free in {dest.parent} to stage {src}. Got {free >> 20} "
                            "MiB. Free scratch space or read the dataset from the shared filesystem.")
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            metadata = [*src.rglob("zarr.json"), *src.glob("doc_starts/c/*")]
            for path in metadata:
                rel = path.relative_to(src).as_posix()
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_from_store(src, rel, target)
            for f in manifest.files:
                target = tmp / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_from_store(src, f.path, target, f.sha256)
                if progress is not None:
                    progress(1)
            _copy_from_store(src, MANIFEST_NAME, tmp / MANIFEST_NAME)  # last: marks the copy complete
            shutil.rmtree(dest, ignore_errors=True)  # a stray incomplete copy (no manifest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest, True
