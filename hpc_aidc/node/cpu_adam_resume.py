"""Bitwise resume for runs whose optimizer is DeepSpeed's CPU Adam (ZeRO with optimizer offload).

Its C++ optimizer keeps Adam's bias-correction powers beta^t as a running product, multiplied once per
step, and a checkpoint does not hold them: a fresh process resuming at step k starts from pow(beta, k),
which differs from the product in the last bits, and from there its weights drift from the uninterrupted
run's. Replaying the product through the same C++ optimizer (one throwaway one-element update per step)
restores it exactly; a million steps replay in seconds."""

from __future__ import annotations

from typing import Any


def replay_bias_correction(optimizer: Any) -> int:
    """Bring a freshly loaded DeepSpeedCPUAdam's running beta powers up to its checkpointed step, calling
    it step by step in the order its own step() does. Returns the steps replayed: 0 for any other
    optimizer (torch's AdamW derives the powers from the step alone) or one that has not stepped yet."""
    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if not isinstance(optimizer, DeepSpeedCPUAdam):
        return 0
    steps = max((int(state["step"]) for state in optimizer.state.values() if "step" in state), default=0)
    scratch = [torch.zeros(1) for _ in range(4)]  # param, grad, exp_avg, exp_avg_sq of no real parameter
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            beta1, beta2 = group["betas"]
            optimizer.ds_opt_adam.adam_update(optimizer.opt_id, step, group["lr"], beta1, beta2, group["eps"],
                                              group["weight_decay"], group["bias_correction"], *scratch)
    return steps
