"""The planner of `hpcai data pack --array N`: N array tasks each write their own shards, then a finalize
job that depends on the whole array (afterok) writes the manifest; Slurm cancels the finalize job when a
task fails. Scripts and logs in `<job_root>/<user>/data-pack/<pack>/`. Pure but for the folder's name."""

from __future__ import annotations

import dataclasses
import secrets
import sys
import time
from pathlib import Path

from hpc_aidc.render.batch_script import array_script, array_spec, module_command, single_script
from hpc_aidc.scheduler.admission import job_parameters, policy_for
from hpc_aidc.scheduler.request import BatchJob, JobRequest, job_ref
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.spec.resources import parse_resources

AUDIT_TAG = "hpcai-data-pack"
PACKS = "data-pack"
PACK_PREFIX = "pack-"  # <job_root>/<user>/data-pack/pack-<time>-<hex>/: scripts and task logs of one pack


def plan_pack(site: SiteProfile, out: str, tasks: int, *, user: str, engine: str = "direct",
              account: str | None = None, partition: str | None = None, time_limit: str = "01:00:00",
              dependency: str | None = None) -> JobRequest:
    """Each job is one CPU on one node. `dependency`: sbatch's --dependency for the array (a pipeline
    stage)."""
    resources = parse_resources(site, nodes=1, ntasks_per_node=1, gpus_per_node=0, cpus_per_task=1,
                                partition=partition, account=account, time=time_limit, job_name="hpcai-pack")
    out = str(Path(out).resolve())
    user_dir = site.job_root / user
    folder = user_dir / PACKS / f"{PACK_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    python = sys.executable
    array = array_script(job_parameters(site, resources, audit_tag=AUDIT_TAG, dependency=dependency), folder,
                         module_command(python, "hpc_aidc.node.pack_job", out, "--tasks", str(tasks), "--engine",
                                        engine), array_spec(f"0-{tasks - 1}", None))
    finalize = dataclasses.replace(resources, job_name="hpcai-pack-finalize")
    final = single_script(job_parameters(site, finalize, audit_tag=AUDIT_TAG, dependency=f"afterok:{job_ref(0)}"),
                          folder,
                          module_command(python, "hpc_aidc.node.pack_job", out, "--finalize"))
    jobs = (BatchJob(array, path=folder / "array.sbatch"), BatchJob(final, path=folder / "finalize.sbatch"))
    return JobRequest(kind="data pack", user_dir=user_dir, policy=policy_for(resources, user, time_given=True),
                      audit_tag=AUDIT_TAG, folders=(folder,), jobs=jobs, output=out, ends_with=(1,))
