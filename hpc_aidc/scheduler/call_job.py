"""The planner of jobs that run a pickled call through submitit (`submit run`, `submit train`, a pipeline's
report stage and launcher job): one job in `<job_root>/<user>/<jobid>/`, its script rendered from the same
parameters submitit's executor would use. Pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpc_aidc.formats.node_call import RUN_COMMAND
from hpc_aidc.render.sbatch import job_folder, python_command, render_sbatch
from hpc_aidc.scheduler.admission import job_parameters, policy_for
from hpc_aidc.scheduler.request import BatchJob, FileWrite, JobRequest, PickledCall, job_ref
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.spec.resources import Resources


def job_dir(folder_pattern: Path) -> Path:
    """The job's own folder, with job_ref(0) for the id sbatch will give."""
    return Path(str(folder_pattern).replace("%j", job_ref(0)))


def plan_call(site: SiteProfile, resources: Resources, fn: Callable[..., Any], args: Callable[[Path], tuple[Any, ...]],
              *, kind: str, user: str, audit_tag: str, time_given: bool, launcher_prefix: str = "",
              after: Callable[[Path], Sequence[FileWrite]] = lambda _: (), **render_kwargs: Any) -> JobRequest:
    """`args(folder)` and `after(job_dir)`: the call's arguments and the files written into the job's folder
    once it is numbered. `{user}` in extra_env values is the submitting user."""
    folder = job_folder(site, user)
    if "extra_env" in render_kwargs:
        render_kwargs["extra_env"] = {k: v.replace("{user}", user) for k, v in render_kwargs["extra_env"].items()}
    params = job_parameters(site, resources, audit_tag=audit_tag, **render_kwargs)
    script = render_sbatch(params, folder, python_command(launcher_prefix))
    call = PickledCall(fn, args(folder), folder, resources.time_min)
    return JobRequest(kind=kind, user_dir=folder.parent, policy=policy_for(resources, user, time_given=time_given),
                      audit_tag=audit_tag, jobs=(BatchJob(script, call=call),), after=tuple(after(job_dir(folder))),
                      output=str(job_dir(folder)))


def plan_run(site: SiteProfile, resources: Resources, command: Sequence[str], *, user: str, audit_tag: str,
             time_given: bool, kind: str = "run", dependency: str | None = None) -> JobRequest:
    """COMMAND in every task of the allocation (srun-launched), argv as given: no shell in between."""
    return plan_call(site, resources, RUN_COMMAND, lambda _: (list(command),), kind=kind, user=user,
                     audit_tag=audit_tag, time_given=time_given, dependency=dependency)
