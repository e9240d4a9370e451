"""What a job asks Slurm for, validated against the site profile before anything is submitted."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpc_aidc.errors import SpecError
from hpc_aidc.site_profile import Partition, SiteProfile
from hpc_aidc.slurmtime import parse_time_limit

# Requests no node of the partition can hold: the site policy's code (hpc_aidc/spec/policy.py), which
# job_submit.lua gives for the same request.
IMPOSSIBLE = "HPCAI-P004"
# Slurm stores names verbatim; newlines or control characters would break #SBATCH lines and sacct's
# line-oriented output, so they are refused rather than escaped.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 200


@dataclass(frozen=True)
class Resources:
    nodes: int
    ntasks_per_node: int
    gpus_per_node: int
    gpu_type: str | None
    cpus_per_task: int
    partition: str
    account: str | None
    qos: str | None
    time_min: int
    job_name: str
    # --mem per node as Slurm writes it ("4096M"; "0": all of the node's memory); None: not asked for
    mem: str | None = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


def _count(value: int | None, flag: str, default: int, minimum: int = 1) -> int:
    chosen = default if value is None else value
    if chosen < minimum:
        raise SpecError(f"Expected {flag} >= {minimum}. Got {chosen} instead. Pass a count of {minimum} or more.")
    return chosen


def parse_job_name(name: str) -> str:
    if not name or _CONTROL.search(name) or len(name) > _MAX_NAME:
        raise SpecError(
            f"Expected --job-name of 1-{_MAX_NAME} printable characters without newlines. "
            f"Got {name!r} instead. Choose a shorter, single-line name."
        )
    return name


def default_cpus_per_task(part: Partition, gpus_per_node: int, tasks_per_node: int) -> int:
    """CPUs per task when --cpus-per-task is not given: on GPU jobs, the partition's CPUs per GPU times
    each task's GPUs (Python, NCCL's proxy thread, data loading and CPU Adam each want a core), never more
    than the node has per task; 1 on CPU jobs."""
    if gpus_per_node <= 0 or tasks_per_node <= 0:
        return 1
    gpus_per_task = max(1, gpus_per_node // tasks_per_node)
    return max(1, min(part.default_cpus_per_gpu * gpus_per_task, part.cpus_per_node // tasks_per_node))


def parse_resources(
    site: SiteProfile,
    *,
    nodes: int | None = None,
    ntasks_per_node: int | None = None,
    gpus_per_node: int | None = None,
    gpu_type: str | None = None,
    cpus_per_task: int | None = None,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    time: str | None = None,
    job_name: str = "hpcai",
) -> Resources:
    """Check a request against the site's partition before Slurm sees it, so mistakes fail in
    milliseconds with a fix, not after a queue wait."""
    part = site.partition(partition)
    n_nodes = _count(nodes, "--nodes", 1)
    if n_nodes > part.nodes:
        raise SpecError(
            f"{IMPOSSIBLE}: Expected at most {part.nodes} nodes in partition {part.name!r}. "
            f"Got --nodes {n_nodes} instead. Ask for fewer nodes or pick a larger partition."
        )
    gpus = _count(gpus_per_node, "--gpus-per-node", 0, minimum=0)
    if gpus and not part.gpus_per_node:
        from hpc_aidc.spec.policy import gpu_partitions_text, message

        raise SpecError(str(message("gpus-on-cpu-partition", partition=part.name, gpus=gpus * n_nodes,
                                    gpu_partitions=gpu_partitions_text(site))))
    if gpus > part.gpus_per_node:
        raise SpecError(
            f"{IMPOSSIBLE}: Expected at most {part.gpus_per_node} GPUs per node in partition {part.name!r}. "
            f"Got --gpus-per-node {gpus} instead. Ask for fewer GPUs per node and more nodes."
        )
    if gpu_type is not None:
        if gpus == 0:
            raise SpecError(
                f"Expected --gpus-per-node with --gpu-type. Got --gpu-type {gpu_type!r} and no GPUs. "
                "Add --gpus-per-node N."
            )
        if gpu_type != part.gpu_type:
            offered = part.gpu_type or "no GPUs"
            raise SpecError(
                f"Expected a GPU type offered by partition {part.name!r} ({offered}). Got --gpu-type "
                f"{gpu_type!r} instead. Use --gpu-type {part.gpu_type} or another partition."
                if part.gpu_type
                else f"Expected no --gpu-type on partition {part.name!r}, which has {offered}. "
                f"Got {gpu_type!r}. Pick a GPU partition."
            )
    # One task per GPU by default: that is how every DeepSpeed/torch rank binds to its own GPU.
    tasks = _count(ntasks_per_node, "--ntasks-per-node", max(gpus, 1))
    cpus = _count(cpus_per_task, "--cpus-per-task", default_cpus_per_task(part, gpus, tasks))
    if tasks * cpus > part.cpus_per_node:
        raise SpecError(
            f"{IMPOSSIBLE}: Expected ntasks-per-node x cpus-per-task <= {part.cpus_per_node} (CPUs per node in "
            f"{part.name!r}). Got {tasks} x {cpus} = {tasks * cpus} instead. Lower one of them."
        )
    limit = site.default_time_min if time is None else parse_time_limit(time)
    if part.max_time_min is not None and limit > part.max_time_min:
        raise SpecError(
            f"Expected --time within partition {part.name!r}'s limit of {part.max_time_min} min. "
            f"Got {limit} min instead. Shorten the job or let it requeue and resume."
        )
    return Resources(
        nodes=n_nodes,
        ntasks_per_node=tasks,
        gpus_per_node=gpus,
        gpu_type=gpu_type if gpus else None,
        cpus_per_task=cpus,
        partition=part.name,
        account=account or site.default_account,
        qos=qos or site.default_qos,
        time_min=limit,
        job_name=parse_job_name(job_name),
    )
