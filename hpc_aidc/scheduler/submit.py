"""Submission through submitit's SlurmExecutor: the one place where jobs enter Slurm."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pwd
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import AccessError, SlurmError
from hpc_aidc.ids import current_user
from hpc_aidc.render.sbatch import render_sbatch
from hpc_aidc.slurm_client import first_error_line, run_slurm

if TYPE_CHECKING:
    import submitit

# The user folder: created like this, refused when others can write to it.
USER_FOLDER_MODE = 0o750
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
# A submission's private staging folder inside the user folder (mkdtemp: unique name, mode 0700).
STAGING_PREFIX = ".submitting-"


@dataclass(frozen=True)
class SubmittedJob:
    job_id: str
    folder: Path
    script: Path


def python_command(launcher_prefix: str = "") -> str:
    """How each task starts Python: the interpreter itself, or behind a launcher such as mpirun."""
    return f"{launcher_prefix} {shlex.quote(sys.executable)}".strip()


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
            f"{target!r} instead. Remove the link (`rm {where}`; ask your admins if it is not yours) and submit "
            "again: hpcai creates the directory itself."
        )
    if not stat.S_ISDIR(st.st_mode):
        return AccessError(
            f"Expected the job directory {user_dir} to be a directory. Got a file instead. Move it away "
            f"(`mv {where} {shlex.quote(str(user_dir) + '.old')}`) and submit again."
        )
    if st.st_uid != os.getuid():
        return AccessError(
            f"Expected the job directory {user_dir} to be owned by you ({user}). Got owner {_owner(st.st_uid)!r} "
            f"instead. Ask your admins to give it to you (`chown {shlex.quote(user)} {where}`) or to remove it."
        )
    if st.st_mode & _WRITABLE_BY_OTHERS:
        who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit)
        return AccessError(
            f"Expected the job directory {user_dir} to be writable by you alone. Got mode "
            f"{stat.S_IMODE(st.st_mode):04o} (writable by {who}) instead. Run `chmod go-w {where}`."
        )
    return None


def prepare_user_folder(user_dir: Path) -> None:
    """Make sure `<job_root>/<user>` is a directory of the current user that nobody else can write to,
    creating it (0750) when missing. Anything else (another owner, group/world-writable, a symlink) is
    refused with one line that says how to fix it. Never lists the folder: a submission costs the same
    whatever the number of past jobs."""
    user = current_user()
    hint = "Check the site profile's job_root (it must be shared, and writable by users)."
    try:
        user_dir.parent.mkdir(parents=True, exist_ok=True)  # the shared root, where admins have not made it
        os.mkdir(user_dir, 0o700)  # private until checked, then USER_FOLDER_MODE
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise AccessError(
            f"Expected to create the job directory {user_dir}. Got {exc.strerror!r} instead. {hint}"
        ) from None
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


def _staged_executor(folder_pattern: Path, staging: Path, python: str,
                     submit_env: Mapping[str, str]) -> submitit.SlurmExecutor:
    """submitit's SlurmExecutor, except that its temporary files (the pickled call, and the batch script
    until sbatch has numbered the job) go to `staging`, a private folder of this one submission, instead
    of the user folder itself. A refused submission then removes exactly what it wrote (the staging
    folder), never a file another submission wrote meanwhile, and nothing lists the user folder.
    After sbatch accepts, both files move to `<job_root>/<user>/<jobid>/` under submitit's own names,
    exactly where submitit would have put them; no per-submission symlink is left in the user folder.
    `submit_env` is added to sbatch's environment, which Slurm passes on to the job."""
    import submitit
    from submitit.core import core, utils

    class StagedSlurmExecutor(submitit.SlurmExecutor):
        def _internal_process_submissions(
            self, delayed_submissions: list[utils.DelayedSubmission]
        ) -> list[core.Job[Any]]:
            if len(delayed_submissions) != 1:
                raise NotImplementedError("hpcai submits one job per call")
            delayed = delayed_submissions[0]
            pickle_path = staging / "submitted.pkl"
            delayed.set_timeout(self.parameters.get("time", 5), self.max_num_timeout)
            delayed.dump(pickle_path)
            job = self._submit_command(self._submitit_command_str)
            job.paths.move_temporary_file(pickle_path, "submitted_pickle")
            return [job]

        def _submit_command(self, command: str) -> core.Job[Any]:
            script = staging / "submission.sh"
            script.write_text(self._make_submission_file_text(command, staging.name))
            output = utils.CommandFunction(self._make_submission_command(script), verbose=False,
                                           env={**os.environ, **submit_env})()
            job_id = self._get_job_id_from_submission_command(output)
            job: core.Job[Any] = self.job_class(folder=self.folder, job_id=job_id,
                                                tasks=list(range(self._num_tasks())))
            job.paths.move_temporary_file(script, "submission_file")
            return job

    return StagedSlurmExecutor(folder=folder_pattern, python=python)


def submit_function(fn: Callable[..., Any], args: tuple[Any, ...], parameters: Mapping[str, Any],
                    folder_pattern: Path, launcher_prefix: str = "",
                    submit_env: Mapping[str, str] | None = None) -> SubmittedJob:
    """Pickle fn(*args) and submit it; returns once sbatch has accepted the job. `submit_env`: variables
    the job gets through sbatch's environment rather than its script (so --dry-run stays reproducible)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    user_dir = folder_pattern.parent
    prepare_user_folder(user_dir)
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=user_dir))
    except OSError as exc:
        raise AccessError(
            f"Expected to write in the job directory {user_dir}. Got {exc.strerror!r} instead. Free space "
            "there (`df -h`, `du -sh`) or ask your admins."
        ) from None
    try:
        executor = _staged_executor(folder_pattern, staging, python_command(launcher_prefix), submit_env or {})
        executor.update_parameters(**parameters)
        # submitit echoes sbatch's stderr itself; we report it once, as our one-line error.
        with contextlib.redirect_stderr(io.StringIO()):
            job = executor.submit(fn, *args)
    except (FailedJobError, FailedSubmissionError) as exc:
        raise SlurmError(f"sbatch refused the job: {first_error_line(str(exc))}") from None
    finally:
        # Empty after a submission (its files moved to the job folder); what a refused one wrote otherwise.
        shutil.rmtree(staging, ignore_errors=True)
    folder = Path(str(folder_pattern).replace("%j", job.job_id))
    return SubmittedJob(job_id=str(job.job_id), folder=folder, script=job.paths.submission_file)


def sbatch_file(script: Path, env: Mapping[str, str] | None = None, what: str = "the job") -> str:
    """sbatch a script file that the caller laid down in the job's own folder (`env`: variables for the job,
    through sbatch's environment); the job id (for an array, the array job id). The one plain sbatch call:
    submitit's jobs go through `submit_function`."""
    proc = run_slurm(["sbatch", "--parsable", str(script)], check=False, env=env)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch refused {what}: {first_error_line(proc.stderr or proc.stdout)}")
    return proc.stdout.strip().split(";")[0]


def dry_run_script(parameters: Mapping[str, Any], folder_pattern: Path, launcher_prefix: str = "") -> str:
    return render_sbatch(parameters, folder_pattern, python_command(launcher_prefix))


def test_only(script: str) -> str:
    """Ask slurmctld whether (and where) the script would run, without submitting it."""
    proc = run_slurm(["sbatch", "--test-only"], stdin=script, check=False)
    message = (proc.stderr or proc.stdout).strip()
    if proc.returncode != 0:
        raise SlurmError(f"sbatch --test-only refused the job: {first_error_line(message)}")
    return message.removeprefix("sbatch: ").strip()
