"""Stage a packed dataset to node-local scratch, once per node per job, verified while copying.

The copy lives at <scratch>/hpcai-<user>/job-<jobid>/<name>-<hash of the source path>, so users and jobs
never share a copy. Concurrent stagers on one node (one per rank) take a file lock; the first copies
into a temp folder, checks every shard's sha256 as it streams, and renames the folder into place (a
reader sees a complete copy or none); the others find the copy done and return at once."""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from hpc_aidc.data.spec import MANIFEST_NAME, read_manifest
from hpc_aidc.errors import DataError
from hpc_aidc.fsutil import file_lock

_BLOCK = 8 << 20


def job_key(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if environ is None else environ
    user = env.get("USER") or env.get("LOGNAME") or getpass.getuser()
    return user, env.get("SLURM_JOB_ID", "nojob")


def default_scratch(environ: Mapping[str, str] | None = None) -> Path:
    """The site profile's scratch path, else $TMPDIR, else /tmp."""
    env = os.environ if environ is None else environ
    try:
        from hpc_aidc.site import load_site

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


def staged_copy(source: str | Path, scratch: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> Path | None:
    """The complete local copy for this user and job, if one was staged."""
    path = local_path(source, scratch, environ)
    return path if (path / MANIFEST_NAME).is_file() else None


def _copy_checked(src: Path, dst: Path, sha256: str, name: str) -> None:
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while block := fin.read(_BLOCK):
            digest.update(block)
            fout.write(block)
    if digest.hexdigest() != sha256:
        raise DataError(f"Expected shard {name} to match its manifest sha256 while staging. Got a mismatch "
                        "(corrupted source). Run `hpcai data verify` on the source and re-pack.")


def stage(source: str | Path, scratch: str | Path | None = None, environ: Mapping[str, str] | None = None,
          progress: Callable[[int], None] | None = None) -> tuple[Path, bool]:
    """(local copy, whether this call copied it). Raises DataError naming a bad shard."""
    src = Path(source)
    manifest = read_manifest(src)
    dest = local_path(src, scratch, environ)
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
            for meta in src.rglob("zarr.json"):
                target = tmp / meta.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(meta, target)
            for doc in src.glob("doc_starts/c/*"):
                target = tmp / doc.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(doc, target)
            for f in manifest.files:
                target = tmp / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_checked(src / f.path, target, f.sha256, f.path)
                if progress is not None:
                    progress(1)
            shutil.copyfile(src / MANIFEST_NAME, tmp / MANIFEST_NAME)  # last: marks the copy complete
            shutil.rmtree(dest, ignore_errors=True)  # a stray incomplete copy (no manifest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest, True
