"""TrainConfig + world size -> DeepSpeed's JSON config (pure)."""

from __future__ import annotations

from typing import Any

from hpc_aidc.spec.memory import ZERO3_MAX_LIVE_ELEMENTS, ZERO3_PREFETCH_ELEMENTS, bucket_elements
from hpc_aidc.spec.train import TrainConfig, global_batch


def zero_section(config: TrainConfig) -> dict[str, Any]:
    """zero_optimization: the stage, buckets the planner counts (spec.memory), communication overlapped
    with the backward pass, offload into pinned host memory (page-locked: the copies run at full PCIe
    speed without a staging copy)."""
    t = config.train
    psi = config.model.n_params // t.pipeline_stages
    zero: dict[str, Any] = {"stage": t.zero, "reduce_bucket_size": bucket_elements(config)}
    if t.zero in (1, 2):
        zero.update(overlap_comm=True, contiguous_gradients=True, allgather_bucket_size=bucket_elements(config))
    if t.zero == 3:
        zero.update(overlap_comm=True, contiguous_gradients=True,
                    stage3_prefetch_bucket_size=min(ZERO3_PREFETCH_ELEMENTS, psi),
                    stage3_max_live_parameters=min(ZERO3_MAX_LIVE_ELEMENTS, psi))
    if t.offload in ("optimizer", "optimizer+params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if t.offload == "optimizer+params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return zero


def deepspeed_config(config: TrainConfig, world_size: int) -> dict[str, Any]:
    t, o = config.train, config.optimizer
    half = t.precision in ("bf16", "fp16")
    precision: dict[str, Any] = {}
    if half:
        # Gradients of 16-bit training are reduced in fp32 (a sum over many ranks in bf16 loses bits) ...
        precision["communication_data_type"] = "fp32"
    if t.precision == "bf16" and t.zero >= 1:
        # ... and accumulated in fp32 across micro-batches (DeepSpeed supports it from ZeRO-1 on).
        precision["data_types"] = {"grad_accum_dtype": "fp32"}
    return {
        "train_batch_size": global_batch(config, world_size),
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": o.grad_clip,
        "steps_per_print": 10**9,  # hpc-aidc logs every step itself (metrics.jsonl)
        "zero_optimization": zero_section(config),
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW needs no JIT-built op (DeepSpeed's FusedAdam compiles for minutes on first use
            # and needs a compiler on the nodes) and its bias correction is a pure function of the step,
            # so a resumed run is bitwise the uninterrupted one. Offload needs DeepSpeed's CPU Adam.
            # DeepSpeed reads the switch from inside "params" only. foreach: one multi-tensor update for all
            # parameters (torch only picks it by itself on GPUs).
            "params": {"lr": o.lr, "betas": [o.beta1, o.beta2], "eps": 1e-8, "weight_decay": o.weight_decay,
                       "torch_adam": t.offload == "none", **({"foreach": True} if t.offload == "none" else {})},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": o.lr, "warmup_num_steps": o.warmup_steps,
                       "total_num_steps": max(t.max_steps, o.warmup_steps + 1), "warmup_type": "linear"},
        },
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "initial_scale_power": 12},
        **precision,
        "wall_clock_breakdown": False,
    }
