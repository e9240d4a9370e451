"""`submit(site, request)`: the one place where jobs enter Slurm. Every kind's planner returns a JobRequest
(scheduler.request); this checks it against the site's policy and the user folder, lays down its folders and
files, sbatch'es its jobs in order (a pickled call through submitit's own job layout), and writes its
records once Slurm has numbered the jobs. All or nothing: when sbatch refuses a job, the jobs this call
submitted are cancelled and what it laid down is removed. `dry_run` checks the same and returns the scripts."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpc_aidc.errors import AccessError, SlurmError
from hpc_aidc.fsutil import atomic_write_bytes
from hpc_aidc.scheduler.parse import clean_test_only
from hpc_aidc.scheduler.request import BatchJob, FileWrite, JobRequest, PickledCall, resolve_refs
from hpc_aidc.scheduler.user_folder import claim_folder, prepare_user_folder
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.slurm_client import first_error_line, run_slurm

# A submission's private staging folder inside the user folder (mkdtemp: unique name, mode 0700): a pickled
# call and its script wait there until sbatch has numbered the job.
STAGING_PREFIX = ".submitting-"
# submitit's own default: how many times a job that timed out is requeued from its checkpoint.
_MAX_NUM_TIMEOUT = 3


@dataclass(frozen=True)
class Submitted:
    request: JobRequest
    job_ids: tuple[str, ...]

    def resolve(self, text: str) -> str:
        """A path or text of the request with the job ids sbatch gave."""
        return resolve_refs(text, self.job_ids)


def admit(site: SiteProfile, request: JobRequest) -> None:
    """Refuse (exit 2, one line) what the site's policy would refuse at sbatch."""
    from hpc_aidc.spec.policy import enforce

    if request.policy is not None:
        enforce(site, request.policy)


def dry_run(site: SiteProfile, request: JobRequest, ask_slurm: bool = False) -> tuple[list[str], str | None]:
    """The scripts `submit` would hand to sbatch, after the same checks; with `ask_slurm`, slurmctld's
    verdict on the first job (sbatch --test-only; later jobs wait for earlier ones not submitted yet)."""
    from hpc_aidc.slurm_client import slurm_available

    admit(site, request)
    verdict = None
    if ask_slurm and request.jobs and slurm_available():
        verdict = _explained(request, lambda: test_only(request.jobs[0].script))
    return request.scripts(), verdict


def submit(site: SiteProfile, request: JobRequest) -> Submitted:
    from hpc_aidc.scheduler.submit_context import submit_context_env

    admit(site, request)
    prepare_user_folder(request.user_dir)
    env = submit_context_env()  # the job's environment.json gets it through sbatch's environment
    laid: list[Path] = []       # what this call created, removed again if sbatch refuses
    job_ids: list[str] = []
    try:
        for folder in request.folders:
            _make_folder(folder, request.user_dir, laid)
        for item in request.before:
            _write(item, request.user_dir, laid)
        for job in request.jobs:
            job_ids.append(_explained(request, functools.partial(_sbatch_job, request, job, job_ids, env, laid)))
    except BaseException:
        _undo(job_ids, laid)
        raise
    done = Submitted(request, tuple(job_ids))
    for item in request.after:
        _write(FileWrite(Path(done.resolve(str(item.path))), done.resolve(item.text), item.mode, item.append),
               request.user_dir, [])
    return done


def _explained(request: JobRequest, call: Callable[[], str]) -> str:
    """When Slurm refuses a job and the account or QoS is why, say which ones the user may use (a slurmdbd
    round trip, ~0.3 s, made only on refusal)."""
    from hpc_aidc.scheduler.associations import check_association

    try:
        return call()
    except SlurmError:
        if request.policy is not None:
            check_association(request.policy.user, request.policy.account, request.policy.qos)
        raise


def _sbatch_job(request: JobRequest, job: BatchJob, earlier: list[str], env: Mapping[str, str],
                laid: list[Path]) -> str:
    script = resolve_refs(job.script, earlier)
    if job.call is not None:
        return _sbatch_pickled(request.user_dir, job.call, script, env)
    if job.path is None:
        raise ValueError("a batch job needs a script path or a pickled call")
    _write(FileWrite(job.path, script), request.user_dir, laid)
    return _sbatch(job.path, env, f"the {request.kind} job")


def _sbatch(script: Path, env: Mapping[str, str], what: str) -> str:
    """The job id (for an array, the array job id)."""
    proc = run_slurm(["sbatch", "--parsable", str(script)], check=False, env=env)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch refused {what}: {first_error_line(proc.stderr or proc.stdout)}")
    return proc.stdout.strip().split(";")[0]


def _sbatch_pickled(user_dir: Path, call: PickledCall, script: str, env: Mapping[str, str]) -> str:
    """What submitit's SlurmExecutor does, with its temporary files (the pickled call, and the script until
    sbatch has numbered the job) in a private folder of this one submission instead of the user folder:
    a refusal removes exactly what it wrote, never a file another submission wrote meanwhile. Once sbatch
    accepts, both move to `<job_root>/<user>/<jobid>/` under submitit's own names."""
    from submitit.core import utils

    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=user_dir))
    except OSError as exc:
        raise AccessError(
            f"Expected to write in the job directory {user_dir}. Got {exc.strerror!r} instead. Free space "
            "there (`df -h`, `du -sh`) or ask your admins."
        ) from None
    try:
        delayed = utils.DelayedSubmission(call.fn, *call.args)
        delayed.set_timeout(call.time_min, _MAX_NUM_TIMEOUT)
        delayed.dump(staging / "submitted.pkl")
        (staging / "submission.sh").write_text(script)
        job_id = _sbatch(staging / "submission.sh", env, "the job")
        paths = utils.JobPaths(call.folder, job_id=job_id, task_id=0)
        try:
            # the job's folder must be ours alone before its pickled call goes there: one someone else
            # made could swap the call and run their code as us
            claim_folder(paths.folder)
            os.rename(staging / "submitted.pkl", paths.submitted_pickle)
            os.rename(staging / "submission.sh", paths.submission_file)
        except BaseException:
            _undo([job_id], [])
            raise
        return job_id
    finally:
        # Empty after a submission (its files moved to the job folder); what a refused one wrote otherwise.
        shutil.rmtree(staging, ignore_errors=True)


def _make_folder(folder: Path, user_dir: Path, laid: list[Path]) -> None:
    """Make what is missing of `folder` (0750); inside the user folder, every part must be ours alone."""
    chain = [p for p in [folder, *folder.parents] if p == user_dir or user_dir in p.parents]
    outside = [p for p in [folder, *folder.parents] if p not in chain and p != user_dir]
    for path in reversed(outside):
        if not path.exists():
            path.mkdir(mode=0o750)
            laid.append(path)
    for path in reversed(chain):
        if path == user_dir:
            continue
        existed = path.exists() or path.is_symlink()
        claim_folder(path)
        if not existed:
            laid.append(path)


def _write(item: FileWrite, user_dir: Path, laid: list[Path]) -> None:
    existed = item.path.exists()
    _make_folder(item.path.parent, user_dir, laid)
    if item.append:
        # one whole line in one write: concurrent appenders never interleave
        fd = os.open(item.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, item.mode)
        try:
            os.write(fd, (item.text.rstrip("\n") + "\n").encode())
        finally:
            os.close(fd)
    else:
        atomic_write_bytes(item.path, item.text.encode(), item.mode)
    if not existed:
        laid.append(item.path)


def _undo(job_ids: list[str], laid: list[Path]) -> None:
    """After a refusal: cancel what this call submitted, remove what it laid down (newest first)."""
    if job_ids:
        from hpc_aidc.scheduler.accounting import cancel_jobs

        with contextlib.suppress(SlurmError):
            cancel_jobs(job_ids)
    for path in reversed(laid):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()


def test_only(script: str) -> str:
    """Ask slurmctld whether (and where) the script would run, without submitting it: its verdict in the same
    words whatever the Slurm version (scheduler.parse.clean_test_only)."""
    proc = run_slurm(["sbatch", "--test-only"], stdin=script, check=False)
    message = (proc.stderr or proc.stdout).strip()
    if proc.returncode != 0:
        raise SlurmError(f"sbatch --test-only refused the job: {first_error_line(message)}")
    return clean_test_only(message).removeprefix("sbatch: ").strip()
