"""`hpcai data pack --array N`: N submitit array tasks each write their own shards (pack_task), then a
finalize job that depends on the whole array (afterok) writes the manifest. The plan was written
before submission, so the tasks only read it. Kept small: the general submit module will absorb it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hpc_aidc.errors import SlurmError
from hpc_aidc.ids import current_user
from hpc_aidc.scheduler.submit import prepare_user_folder
from hpc_aidc.site import SiteProfile
from hpc_aidc.slurmtime import parse_time_limit


def _params(site: SiteProfile, account: str | None, partition: str | None, time_limit: str) -> dict[str, Any]:
    """Each pack job is one CPU on one node: admitted like every submission (the site's policy, the energy
    line, the audit tag), with submitit's parameter names."""
    from hpc_aidc.scheduler.admission import admit, energy_setup
    from hpc_aidc.spec.resources import parse_resources

    resources = parse_resources(site, nodes=1, ntasks_per_node=1, gpus_per_node=0, cpus_per_task=1,
                                partition=partition, account=account, time=time_limit,
                                job_name="hpcai-pack")
    admit(site, resources, current_user(), time_given=True)
    params: dict[str, Any] = {
        "partition": resources.partition, "time": parse_time_limit(time_limit),
        "ntasks_per_node": 1, "cpus_per_task": 1, "setup": [*site.setup, *energy_setup(site)],
        "comment": "hpcai-data-pack",  # the audit tag (slurm/audit), never trusted for identity
    }
    if resources.account:
        params["account"] = resources.account
    return params


def pack_scripts(site: SiteProfile, tasks: int, *, account: str | None = None, partition: str | None = None,
                 time_limit: str = "01:00:00", dependency: str | None = None) -> list[str]:
    """The two sbatch scripts submit_pack_array submits (the array, then its finalize job), for dry runs;
    the finalize job's dependency names the array as `<array>`, whose id sbatch has not given yet."""
    from submitit.slurm.slurm import _make_sbatch_string

    from hpc_aidc.render.sbatch import dependency_parameters, submitit_command

    folder = site.job_root / current_user() / "data-pack" / "%j"
    params = _params(site, account, partition, time_limit)
    command = submitit_command(sys.executable, folder)
    array = _make_sbatch_string(command=command, folder=folder, job_name="hpcai-pack", map_count=tasks,
                                array_parallelism=tasks, additional_parameters=dependency_parameters(dependency),
                                **params)
    final = _make_sbatch_string(command=command, folder=folder, job_name="hpcai-pack-finalize",
                                additional_parameters=dependency_parameters("afterok:<array>"), **params)
    return [str(array), str(final)]


def submit_pack_array(site: SiteProfile, out: str, tasks: int, *, engine: str = "direct",
                      account: str | None = None, partition: str | None = None, time_limit: str = "01:00:00",
                      wait: bool = False, dependency: str | None = None) -> dict[str, Any]:
    """`dependency`: sbatch's --dependency for the array (a pipeline stage); the finalize job waits for
    the array, and either is cancelled by Slurm when what it waits for fails."""
    import submitit
    from submitit.core.utils import FailedJobError

    from hpc_aidc.data.pack import finalize_pack, pack_task
    from hpc_aidc.render.sbatch import dependency_parameters

    out = str(Path(out).resolve())
    user_dir = site.job_root / current_user()
    prepare_user_folder(user_dir)  # ours, and nobody else's to write, before anything is written in it
    folder = user_dir / "data-pack" / "%j"
    params = _params(site, account, partition, time_limit)
    try:
        executor = submitit.SlurmExecutor(folder=folder, python=sys.executable)
        executor.update_parameters(job_name="hpcai-pack", array_parallelism=tasks,
                                   additional_parameters=dependency_parameters(dependency), **params)
        jobs = executor.map_array(pack_task, [out] * tasks, list(range(tasks)), [tasks] * tasks,
                                  [engine] * tasks)
        array_id = jobs[0].job_id.split("_")[0]
        executor.update_parameters(job_name="hpcai-pack-finalize",
                                   additional_parameters=dependency_parameters(f"afterok:{array_id}"))
        final = executor.submit(finalize_pack, out)
    except FailedJobError as exc:
        raise SlurmError(f"Expected sbatch to accept the pack jobs. Got: {str(exc).strip().splitlines()[-1]}. "
                         "Check --account/--partition with `sinfo` and `sacctmgr show assoc user=$USER`.") \
            from None
    if wait:
        for job in [*jobs, final]:
            job.result()  # raises with the task's traceback if a task failed
    return {"array_job": array_id, "tasks": tasks, "finalize_job": final.job_id,
            "folder": str(folder).replace("%j", "<jobid>"), "out": out}
