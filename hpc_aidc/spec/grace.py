"""The grace between Slurm's warning signal (USR2) and the kill (pure).

On the warning, the trainer finishes the step it is in; the ranks learn of it one step later (the
warning flag is reduced with the loss, asynchronously); then every rank writes the checkpoint. So the
grace must cover two steps and one checkpoint write, with a margin for the requeue and the processes'
exit. The step and write times come from the last run of a job with the same shape (the trainer records
them, see formats.grace_record); before any run they are estimated from the model's FLOPs and the checkpoint's
size with conservative rates."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from hpc_aidc.spec.flops import flops_per_token
from hpc_aidc.spec.memory import checkpoint_bytes
from hpc_aidc.spec.train import TrainConfig

DEFAULT_GRACE_S = 120     # what hpc-aidc asked for before it measured anything; never less
MARGIN_S = 30             # requeue, process exit, Slurm's own signalling
SAFETY = 1.25             # measured times vary between runs (filesystem load, stragglers)
# A-priori rates, deliberately low: model FLOPs at 25% of the GPUs' peak, 0.5 GB/s written per node.
ASSUMED_MFU = 0.25
ASSUMED_WRITE_BYTES_PER_S_PER_NODE = 0.5e9
ASSUMED_CPU_FLOPS_PER_RANK = 5e10  # CPU ranks (no GPU peak to go by)


@dataclass(frozen=True)
class Grace:
    seconds: int
    step_s: float
    checkpoint_s: float
    measured: bool          # from a previous run's record, not estimated
    capped: bool = False    # shortened to half the time limit


def needed_s(step_s: float, checkpoint_s: float) -> int:
    """Seconds from the warning to a written checkpoint: two steps and a write, with margin."""
    return math.ceil(SAFETY * (2 * step_s + checkpoint_s) + MARGIN_S)


def estimate_times(config: TrainConfig, world_size: int, nodes: int,
                   peak_tflops: float | None) -> tuple[float, float]:
    """(seconds per optimizer step, seconds per checkpoint write) before any run measured them."""
    t = config.train
    dp = world_size // t.pipeline_stages
    tokens = dp * t.micro_batch * t.grad_accum * config.model.seq_len
    rate = world_size * (peak_tflops * 1e12 * ASSUMED_MFU if peak_tflops else ASSUMED_CPU_FLOPS_PER_RANK)
    step = flops_per_token(config.model) * tokens / rate
    write = checkpoint_bytes(config) / (max(1, nodes) * ASSUMED_WRITE_BYTES_PER_S_PER_NODE)
    return step, write


def derive_grace(config: TrainConfig, world_size: int, nodes: int, peak_tflops: float | None,
                 time_limit_min: int, last: tuple[float, float] | None = None) -> Grace:
    """The grace to ask for: checkpoint.grace_s when set, else the larger of the default, the estimate and
    what the last run of the same shape measured (`last`: its longest step and checkpoint write), at most
    half the time limit (the warning must not come before the job has started working)."""
    step, write = last if last is not None else estimate_times(config, world_size, nodes, peak_tflops)
    if config.checkpoint.grace_s:
        return Grace(config.checkpoint.grace_s, step, write, last is not None)
    want = max(DEFAULT_GRACE_S, needed_s(step, write))
    cap = max(1, time_limit_min * 60 // 2)
    return Grace(min(want, cap), step, write, last is not None, capped=want > cap)


def shape_key(config: TrainConfig, world_size: int, gpu_type: str | None) -> str:
    """Names the jobs whose step and checkpoint times carry over: same model, parallelism, batch and
    precision on the same number and type of devices."""
    t = config.train
    shape = {"model": config.to_dict()["model"], "world": world_size, "gpu": gpu_type,
             "train": {k: getattr(t, k) for k in ("micro_batch", "grad_accum", "precision", "zero", "offload",
                                                  "pipeline_stages")}}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
