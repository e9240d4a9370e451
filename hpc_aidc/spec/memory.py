"""Memory of a training job, per GPU and per node's host (pure).

Model states follow the ZeRO paper's accounting (Rajbhandari et al. 2020, section 5) as DeepSpeed 0.19
implements it for the configs hpc-aidc writes (render.deepspeed_config):
- parameters in the training precision (partitioned by ZeRO-3);
- gradients: 16-bit training accumulates and reduces in fp32 (`data_types.grad_accum_dtype`,
  `communication_data_type`), so besides the 16-bit gradients DeepSpeed keeps fp32 ones: ZeRO-1 (its
  BF16 optimizer) a full fp32 accumulation buffer, ZeRO-2 the fp32 gradient partition plus the extra
  fp32 copy it hands the fp32 master weights, ZeRO-3 the fp32 partition;
- optimizer: Adam's two moments (8 bytes/param) plus fp32 master weights (4) wherever DeepSpeed keeps
  them apart from the model (16-bit training, or any ZeRO stage), partitioned from ZeRO-1 on;
- communication buckets (reduce, all-gather; double-buffered with overlap_comm) and ZeRO-3's live
  parameters; activations (Korthikanti et al. 2022), with per-layer recomputation when on;
- outside torch's allocator: the CUDA context, cuBLAS workspace and NCCL buffers, plus a share for the
  caching allocator's fragmentation.
The host side counts each rank's process (CUDA, torch, DeepSpeed), offloaded states (pinned), and what a
resume loads into host memory (DeepSpeed reads checkpoint files there first)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpc_aidc.spec.train import TrainConfig

GIB = 1024**3
MIB = 1024**2
# Bucket sizes written into the DeepSpeed config (elements), capped at the model's size.
BUCKET_ELEMENTS = 200_000_000
ZERO3_PREFETCH_ELEMENTS = 50_000_000
ZERO3_MAX_LIVE_ELEMENTS = 1_000_000_000  # DeepSpeed's default stage3_max_live_parameters
# Per GPU, outside torch's caching allocator: CUDA context with lazy module loading (~0.5 GiB on H100),
# cuBLAS workspaces, NCCL's channel buffers (NCCL_BUFFSIZE 4 MiB x channels x peers, ~0.5-1 GiB).
RUNTIME_GIB = 1.5
# The caching allocator holds more than it hands out; hpc-aidc sets expandable segments, which keeps this
# share small.
FRAGMENTATION = 0.10
# Share of a GPU's memory (the site profile's memory_gib) a plan may fill.
GPU_USABLE = 0.95
# Host memory of one rank's process before any model state: torch + CUDA libraries + NCCL + DeepSpeed on
# GPU nodes; torch + DeepSpeed on CPU.
HOST_BASE_GPU_RANK_GIB = 2.0
HOST_BASE_CPU_RANK_GIB = 0.75
# The host request is the plan times this, rounded up to 256 MiB.
HOST_HEADROOM = 1.15


@dataclass(frozen=True)
class MemoryEstimate:
    zero: int
    offload: str
    data_parallel: int
    params_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    buffers_gib: float     # communication buckets, ZeRO-3 live parameters
    runtime_gib: float     # CUDA context, cuBLAS, NCCL: outside torch's allocator
    cpu_gib: float         # per rank: offloaded states in (pinned) host memory

    @property
    def allocated_gib(self) -> float:
        """What torch's allocator hands out at the peak (compare with torch.cuda.max_memory_allocated)."""
        return self.params_gib + self.grads_gib + self.optimizer_gib + self.activations_gib + self.buffers_gib

    @property
    def total_gib(self) -> float:
        """Per GPU, all in: allocations, the allocator's fragmentation and the runtime outside it."""
        return self.allocated_gib * (1 + FRAGMENTATION) + self.runtime_gib

    def fits(self, gpu_memory_gib: float) -> bool:
        return self.total_gib <= GPU_USABLE * gpu_memory_gib


def checkpoint_bytes(config: TrainConfig) -> int:
    """Bytes of one checkpoint, all ranks together, as DeepSpeed writes it (measured on this machine for
    the tiny model, within 1%: fp32 ZeRO-0 12.1, ZeRO-1/2 16.0, ZeRO-3 12.0 bytes/param; bf16 ZeRO-0/2
    14.1, ZeRO-3 12.0): Adam's momentum and variance (8 bytes/param), the fp32 master weights (4) unless
    fp32 training without ZeRO keeps none apart from the model, and the module's weights in the training
    precision, which ZeRO-3 does not write (they are partitioned into the optimizer files)."""
    t = config.train
    half = t.precision in ("bf16", "fp16")
    weights = 0 if t.zero == 3 else (2 if half else 4)
    optimizer = 8 + (4 if t.zero >= 1 or half else 0)
    return config.model.n_params * (weights + optimizer)


def bucket_elements(config: TrainConfig) -> int:
    """The reduce/all-gather bucket: BUCKET_ELEMENTS, or the stage's whole model when smaller (an even
    count: DeepSpeed aligns all-gather buffers to 4 bytes)."""
    psi = math.ceil(config.model.n_params / config.train.pipeline_stages)
    size = min(BUCKET_ELEMENTS, psi)
    return size + size % 2


def optimizer_bytes_per_param(config: TrainConfig, zero: int | None = None) -> int:
    """Adam's moments, plus fp32 master weights wherever DeepSpeed keeps them apart from the model."""
    stage = config.train.zero if zero is None else zero
    half = config.train.precision in ("bf16", "fp16")
    return 8 + (4 if stage >= 1 or half else 0)


def estimate(config: TrainConfig, data_parallel: int, zero: int | None = None,
             offload: str | None = None) -> MemoryEstimate:
    t, m = config.train, config.model
    stage = t.zero if zero is None else zero
    off = t.offload if offload is None else offload
    psi = m.n_params / t.pipeline_stages
    nd = max(1, data_parallel)
    half = t.precision in ("bf16", "fp16")
    p_bytes = 2 if half else 4

    def part(n_bytes: float, partitioned: bool) -> float:
        return n_bytes * psi / (nd if partitioned else 1)

    params = part(p_bytes, stage >= 3)
    # fp32 gradients DeepSpeed keeps beside (or instead of) the training-precision ones
    if not half:
        grads, fp32_grads = part(4, stage >= 2), 0.0
    elif stage == 0:
        grads, fp32_grads = part(2, False), 0.0
    elif stage == 1:  # bf16: DeepSpeed's BF16 optimizer accumulates every gradient in fp32
        grads = part(2, False)
        fp32_grads = part(4, t.precision != "bf16")
    elif stage == 2:  # fp32 gradient partition + the fp32 copy handed to the master weights
        grads, fp32_grads = 0.0, part(4, True) + part(4, True)
    else:
        grads, fp32_grads = 0.0, part(4, True)
    optim = part(optimizer_bytes_per_param(config, stage), stage >= 1)
    cpu = 0.0
    if off in ("optimizer", "optimizer+params"):
        # Master weights, moments and the fp32 gradient partition move to pinned host memory.
        cpu += optim + part(4, True)
        optim, fp32_grads = 0.0, 0.0
    if off == "optimizer+params":
        cpu += params
        params = 0.0
    bucket = bucket_elements(config)
    if stage == 3:
        live = min(ZERO3_MAX_LIVE_ELEMENTS, psi) * p_bytes + min(ZERO3_PREFETCH_ELEMENTS, psi) * p_bytes
        buffers = bucket * 4 + live
    else:
        # reduce bucket (double-buffered with overlap_comm), its fp32 copy for 16-bit training, all-gather
        buffers = bucket * p_bytes * (2 if stage in (1, 2) else 1) + (bucket * 4 if half else 0)
        if stage in (1, 2):
            buffers += bucket * p_bytes
    acts = activation_bytes(config)
    return MemoryEstimate(stage, off, nd, params / GIB, (grads + fp32_grads) / GIB, optim / GIB, acts / GIB,
                          buffers / GIB, RUNTIME_GIB, cpu / GIB)


def activation_bytes(config: TrainConfig) -> float:
    """Activations of one rank at the peak: per layer s*b*h*34 bytes in 16-bit (the built-in model's
    fused attention keeps no s x s score matrix, the paper's 5*a*s/h term), scaled for fp32. With
    recomputation only each segment's input stays (s*b*h in the training precision), plus one segment
    rebuilt in the backward pass. Pipelines keep up to `stages` micro-batches in flight on the first
    stage. Logits: the 16-bit logits, their fp32 copy for the loss, log-probabilities and gradients."""
    t, m = config.train, config.model
    half = t.precision in ("bf16", "fp16")
    act_bytes = 2 if half else 4
    s, b, h = m.seq_len, t.micro_batch, m.d_model
    layers = m.n_layer / t.pipeline_stages
    in_flight = t.pipeline_stages if t.pipeline_stages > 1 else 1
    full_layer = s * b * h * 34 * (act_bytes / 2)
    if m.activation_checkpointing:
        k = min(m.checkpoint_interval, max(1, math.ceil(layers)))
        acts = (math.ceil(layers / k) * s * b * h * act_bytes) * in_flight + k * full_layer
    else:
        acts = layers * full_layer * in_flight
    logits = s * b * m.vocab_size * ((2 + 4 + 4 + 4 + 2) if half else (4 + 4 + 4))
    return acts + logits


def host_bytes_per_rank(config: TrainConfig, zero: int, data_parallel: int, on_gpu: bool,
                        base_gib: float | None = None) -> float:
    """One rank's host memory besides offloaded states: the process itself, and what loading a checkpoint
    puts in host memory first (DeepSpeed reads each file with map_location=cpu): below ZeRO-3 every rank
    reads the whole module's weights, and each rank its optimizer partition. The model itself is built
    on the GPU (or partitioned as it is built, ZeRO-3), never whole in host memory."""
    t, m = config.train, config.model
    psi = m.n_params / t.pipeline_stages
    half = t.precision in ("bf16", "fp16")
    if base_gib is None:
        base_gib = HOST_BASE_GPU_RANK_GIB if on_gpu else HOST_BASE_CPU_RANK_GIB
    base = base_gib * GIB
    module = psi * (2 if half else 4) if zero < 3 else 0.0
    optimizer = optimizer_bytes_per_param(config, zero) * psi / (max(1, data_parallel) if zero >= 1 else 1)
    return base + module + optimizer


def host_gib_per_node(config: TrainConfig, estimate_: MemoryEstimate, ranks_per_node: int, on_gpu: bool,
                      base_gib: float | None = None) -> float:
    """Host memory a node needs: each rank's process (`base_gib`: the site's figure, else hpc-aidc's),
    offloaded states and resume reads; on CPU nodes also everything the GPU estimate counts (CPU
    training keeps it all in host memory)."""
    per_rank = host_bytes_per_rank(config, estimate_.zero, estimate_.data_parallel, on_gpu, base_gib) / GIB
    per_rank += estimate_.cpu_gib
    if not on_gpu:
        per_rank += estimate_.allocated_gib
    return ranks_per_node * per_rank


@dataclass(frozen=True)
class HostRequest:
    need_gib: float   # the plan for one node
    mem_mb: int       # what --mem asks for; 0: all of the node's memory (Slurm's --mem=0)

    @property
    def sbatch_value(self) -> str:
        return "0" if self.mem_mb == 0 else f"{self.mem_mb}M"


def host_request(need_gib: float, mem_per_node_mb: int, share: float) -> HostRequest | None:
    """The --mem of one node: the plan with headroom (rounded up to 256 MiB), at least the job's share
    of the node (its share of the GPUs, or of the CPUs on CPU partitions), capped at the node's memory;
    all of it (--mem=0) when the job takes the whole node. None: the plan does not fit the node
    (mem_per_node_mb 0: the profile does not say, so nothing is refused)."""
    need_mb = need_gib * GIB / MIB
    if mem_per_node_mb and need_mb > mem_per_node_mb:
        return None
    if mem_per_node_mb and share >= 1:
        return HostRequest(need_gib, 0)
    mb = math.ceil(need_mb * HOST_HEADROOM / 256) * 256
    if mem_per_node_mb:
        # the share exactly (a site's per-GPU memory limit is usually that share), never past the node
        mb = min(max(mb, math.floor(share * mem_per_node_mb)), mem_per_node_mb)
    return HostRequest(need_gib, mb)


def suggest(config: TrainConfig, ranks_per_node: int, gpu_memory_gib: float, max_nodes: int,
            host_mem_per_node_gib: float | None = None, host_base_gib: float | None = None,
            ) -> tuple[int, int, str] | None:
    """The smallest (nodes, zero stage, offload) whose estimate fits a GPU and, when the profile says how
    much there is, the node's host memory."""
    for nodes in range(1, max_nodes + 1):
        dp = nodes * ranks_per_node // config.train.pipeline_stages
        for stage in (0, 1, 2, 3):
            for off in ("none", "optimizer", "optimizer+params"):
                if (off != "none" and stage == 0) or (off == "optimizer+params" and stage != 3):
                    continue
                e = estimate(config, dp, stage, off)
                host_ok = host_mem_per_node_gib is None or host_gib_per_node(
                    config, e, ranks_per_node, on_gpu=True, base_gib=host_base_gib) <= host_mem_per_node_gib
                if e.fits(gpu_memory_gib) and host_ok:
                    return nodes, stage, off
    return None
