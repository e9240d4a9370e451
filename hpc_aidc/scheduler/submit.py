"""Submission through submitit's SlurmExecutor: the one place where jobs enter Slurm."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import SlurmError
from hpc_aidc.render.sbatch import render_sbatch
from hpc_aidc.scheduler.slurm_cli import first_error_line, run_slurm


@dataclass(frozen=True)
class SubmittedJob:
    job_id: str
    folder: Path
    script: Path


def python_command(launcher_prefix: str = "") -> str:
    """How each task starts Python: the interpreter itself, or behind a launcher such as mpirun."""
    return f"{launcher_prefix} {shlex.quote(sys.executable)}".strip()


def prepare_user_folder(folder_pattern: Path) -> set[Path]:
    """Create <job_root>/<user> owner-only (logs can hold secrets; admins read it as root) and return
    what it holds now, so a refused submission can remove exactly what it added."""
    user_dir = folder_pattern.parent
    try:
        user_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        return set(user_dir.iterdir())
    except OSError as exc:
        raise SlurmError(
            f"Expected to create and read the job directory {user_dir}. Got: {exc.strerror}. Check the site "
            "profile's job_root (it must be shared, and writable by users)."
        ) from None


def submit_function(fn: Callable[..., Any], args: tuple[Any, ...], parameters: Mapping[str, Any],
                    folder_pattern: Path, launcher_prefix: str = "") -> SubmittedJob:
    """Pickle fn(*args) and submit it; returns once sbatch has accepted the job."""
    import submitit
    from submitit.core.utils import FailedJobError

    before = prepare_user_folder(folder_pattern)
    user_dir = folder_pattern.parent
    executor = submitit.SlurmExecutor(folder=folder_pattern, python=python_command(launcher_prefix))
    executor.update_parameters(**parameters)
    try:
        # submitit echoes sbatch's stderr itself; we report it once, as our one-line error.
        with contextlib.redirect_stderr(io.StringIO()):
            job = executor.submit(fn, *args)
    except FailedJobError as exc:
        # submitit wrote the pickle and script before sbatch refused: leave nothing half-written.
        for leftover in set(user_dir.iterdir()) - before:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        raise SlurmError(f"sbatch refused the job: {first_error_line(str(exc))}") from None
    for link in set(user_dir.iterdir()) - before:
        if link.is_symlink():  # submitit's per-submission convenience link; the script is in the job folder
            link.unlink()
    folder = Path(str(folder_pattern).replace("%j", job.job_id))
    return SubmittedJob(job_id=str(job.job_id), folder=folder, script=folder / f"{job.job_id}_submission.sh")


def dry_run_script(parameters: Mapping[str, Any], folder_pattern: Path, launcher_prefix: str = "") -> str:
    return render_sbatch(parameters, folder_pattern, python_command(launcher_prefix))


def test_only(script: str) -> str:
    """Ask slurmctld whether (and where) the script would run, without submitting it."""
    proc = run_slurm(["sbatch", "--test-only"], stdin=script, check=False)
    message = (proc.stderr or proc.stdout).strip()
    if proc.returncode != 0:
        raise SlurmError(f"sbatch --test-only refused the job: {first_error_line(message)}")
    return message.removeprefix("sbatch: ").strip()


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
