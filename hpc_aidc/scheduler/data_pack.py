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


def submit_pack_array(site: SiteProfile, out: str, tasks: int, *, engine: str = "direct",
                      account: str | None = None, partition: str | None = None, time_limit: str = "01:00:00",
                      wait: bool = False) -> dict[str, Any]:
    import submitit
    from submitit.core.utils import FailedJobError

    from hpc_aidc.data.pack import finalize_pack, pack_task

    out = str(Path(out).resolve())
    user_dir = site.job_root / current_user()
    prepare_user_folder(user_dir)  # ours, and nobody else's to write, before anything is written in it
    folder = user_dir / "data-pack" / "%j"
    params: dict[str, Any] = {
        "partition": site.partition(partition).name, "time": parse_time_limit(time_limit),
        "ntasks_per_node": 1, "cpus_per_task": 1, "setup": list(site.setup),
    }
    if account or site.default_account:
        params["account"] = account or site.default_account
    try:
        executor = submitit.SlurmExecutor(folder=folder, python=sys.executable)
        executor.update_parameters(job_name="hpcai-pack", array_parallelism=tasks, **params)
        jobs = executor.map_array(pack_task, [out] * tasks, list(range(tasks)), [tasks] * tasks,
                                  [engine] * tasks)
        array_id = jobs[0].job_id.split("_")[0]
        executor.update_parameters(job_name="hpcai-pack-finalize",
                                   additional_parameters={"dependency": f"afterok:{array_id}"})
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
