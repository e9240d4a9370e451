"""Per-GPU memory for ZeRO 0-3 with and without offload: the ZeRO paper's model-state formulas
(Rajbhandari et al. 2020, section 5) plus activations (Korthikanti et al. 2022, no recomputation)."""

from __future__ import annotations

from dataclasses import dataclass

from hpc_aidc.spec.train import TrainConfig

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    zero: int
    offload: str
    data_parallel: int
    params_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    cpu_gib: float

    @property
    def total_gib(self) -> float:
        return self.params_gib + self.grads_gib + self.optimizer_gib + self.activations_gib


def estimate(config: TrainConfig, data_parallel: int, zero: int | None = None,
             offload: str | None = None) -> MemoryEstimate:
    t, m = config.train, config.model
    stage = t.zero if zero is None else zero
    off = t.offload if offload is None else offload
    psi = m.n_params / t.pipeline_stages
    half = t.precision in ("bf16", "fp16")
    # 16-bit training keeps 16-bit params and grads plus fp32 master weights, momentum and variance
    # (K = 12 bytes/param); fp32 training keeps fp32 params and grads and K = 8 (momentum, variance).
    p_bytes, g_bytes, k_bytes = (2, 2, 12) if half else (4, 4, 8)
    nd = max(1, data_parallel)
    params = p_bytes * psi / (nd if stage >= 3 else 1)
    grads = g_bytes * psi / (nd if stage >= 2 else 1)
    optim = k_bytes * psi / (nd if stage >= 1 else 1)
    cpu = 0.0
    if off in ("optimizer", "optimizer+params"):
        cpu += optim
        optim = 0.0
    if off == "optimizer+params":
        cpu += params
        params = 0.0
    act_bytes = 2 if half else 4
    s, b, h = m.seq_len, t.micro_batch, m.d_model
    layers = m.n_layer / t.pipeline_stages
    # Per layer: s*b*h*34 bytes in 16-bit (the built-in model's fused attention keeps no s x s score
    # matrix, the 5*a*s/h term of the paper); scaled for fp32. Pipelines keep up to `stages`
    # micro-batches in flight on the first stage.
    in_flight = t.pipeline_stages if t.pipeline_stages > 1 else 1
    acts = layers * s * b * h * 34 * (act_bytes / 2) * in_flight
    acts += 2 * s * b * m.vocab_size * act_bytes  # logits and their gradient
    return MemoryEstimate(stage, off, nd, params / GIB, grads / GIB, optim / GIB, acts / GIB, cpu / GIB)


def suggest(config: TrainConfig, ranks_per_node: int, gpu_memory_gib: float, max_nodes: int,
            headroom: float = 0.9) -> tuple[int, int, str] | None:
    """The smallest (nodes, zero stage, offload) whose estimate fits `headroom` of a GPU's memory."""
    for nodes in range(1, max_nodes + 1):
        dp = nodes * ranks_per_node // config.train.pipeline_stages
        for stage in (0, 1, 2, 3):
            for off in ("none", "optimizer", "optimizer+params"):
                if (off != "none" and stage == 0) or (off == "optimizer+params" and stage != 3):
                    continue
                if estimate(config, dp, stage, off).total_gib <= headroom * gpu_memory_gib:
                    return nodes, stage, off
    return None
