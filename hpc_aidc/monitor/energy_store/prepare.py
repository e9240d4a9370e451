"""A run's directories in the energy store, made before its sampler writes there: by root (the prolog),
which sets aside a job directory someone else planted, or by the job's own sampler on sites without
the prolog."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hpc_aidc.errors import AccessError, EnergyError
from hpc_aidc.ids import parse_job_id
from hpc_aidc.monitor.energy_store.layout import DIR_MODE, WORK_DIR, Owner, run_name
from hpc_aidc.monitor.energy_store.record_dir import RecordDir, set_owner
from hpc_aidc.monitor.energy_store.root import open_store


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
        set_owner(found.fd, Owner(uid, gid), mode)
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
