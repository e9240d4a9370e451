"""Memory of a training job, per GPU and per node's host (pure).

The GPU estimate is torch's peak allocation of one rank (what torch.cuda.max_memory_allocated reports) as
DeepSpeed 0.19 and the built-in model (node/model.py) produce it for the configs hpc-aidc writes
(render.deepspeed_config). Model states stay allocated all the time: the parameters in the training
precision (partitioned by ZeRO-3), Adam's two moments (8 bytes/param) and fp32 master weights (4) wherever
DeepSpeed keeps them apart from the model, partitioned from ZeRO-1 on (Rajbhandari et al. 2020), plus the
gradient buffers that live from one step to the next. Everything else comes and goes within a step, and
the peak is the largest of these moments, each on top of the model states (`estimate` says which stage
holds what; the parts of a MemoryEstimate are those of the moment that wins):
- A, the start of the backward pass: every activation kept for backward, and the loss's fp32 log-softmax
  with its two gradients (12 bytes per logit: often the largest single item);
- B, the backward pass: the activations not yet consumed (bounded by all of them), one layer's gradients
  in flight, and the gradients growing in their buffers: 16-bit gradients (ZeRO-0/1) or the reduce buckets
  and the fp32 partition they reduce into, with the reduction's staging copies (ZeRO-2/3);
- C, the optimizer step: the fp32 gradients the step reads and Adam's temporary (torch's foreach AdamW
  computes sqrt(v) into a new buffer as large as the partition).
Checked on CPU against the allocations of real runs (torch profiler; a 5M-parameter decoder, DeepSpeed
0.19.8, bf16 and fp32, ZeRO 0-3, 1 and 2 ranks, micro-batches 1 and 4, accumulation, recomputation): A and C
match to within 0.3%, the bound for B stays within 1.2x; on an H200 (350m, bf16, ZeRO-2, micro-batch 4, one
rank) torch's peak was moment A plus 0.08 GiB (cuBLAS workspace), which WORKSPACE_GIB covers. Outside
torch's allocator come the CUDA context, NCCL's buffers and the allocator's fragmentation (total_gib).
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
# DeepSpeed's bucket for reducing ZeRO-0 gradients (engine.allreduce_gradients: MEMORY_OPT_ALLREDUCE_SIZE).
ZERO0_REDUCE_ELEMENTS = 500_000_000
# Per GPU, outside torch's caching allocator: CUDA context with lazy module loading (~0.5 GiB on H100),
# NCCL's channel buffers (NCCL_BUFFSIZE 4 MiB x channels x peers, ~0.5-1 GiB).
RUNTIME_GIB = 1.5
# Inside torch's allocator but outside the model's accounting: cuBLAS/cuBLASLt workspaces (32 MiB per
# handle and stream on Hopper), attention kernels' scratch, the batch on the device.
WORKSPACE_GIB = 0.25
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
    """One rank's GPU memory at its peak, in parts as they stand at that moment (spec.memory's A, B or C):
    the model states always, the rest as much of it as that moment holds."""

    zero: int
    offload: str
    data_parallel: int
    params_gib: float
    grads_gib: float       # gradient buffers: fp32 accumulation or partition, 16-bit gradients
    optimizer_gib: float   # fp32 master weights and Adam's moments
    activations_gib: float
    buffers_gib: float     # communication buckets and staging copies, ZeRO-3 gathered parameters, the
    #                        optimizer step's temporary, cuBLAS workspaces
    runtime_gib: float     # CUDA context, NCCL: outside torch's allocator
    cpu_gib: float         # per rank: offloaded states in (pinned) host memory
    peak: str = "A"        # the moment of the peak: A (backward starts), B (backward), C (optimizer step)

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


def largest_param_elements(config: TrainConfig) -> int:
    """The largest single parameter: the token embedding or the untied head (vocab x d), else an MLP
    matrix (4 d x d). Gradient norms and oversized reductions work one parameter at a time."""
    m = config.model
    return min(math.ceil(m.n_params / config.train.pipeline_stages),
               max(m.vocab_size * m.d_model, 4 * m.d_model * m.d_model))


def optimizer_bytes_per_param(config: TrainConfig, zero: int | None = None) -> int:
    """Adam's moments, plus fp32 master weights wherever DeepSpeed keeps them apart from the model."""
    stage = config.train.zero if zero is None else zero
    half = config.train.precision in ("bf16", "fp16")
    return 8 + (4 if stage >= 1 or half else 0)


@dataclass(frozen=True)
class _Moment:
    """What one moment of the step holds beyond the model states (bytes)."""

    name: str
    grads: float
    activations: float
    buffers: float

    @property
    def total(self) -> float:
        return self.grads + self.activations + self.buffers


def estimate(config: TrainConfig, data_parallel: int, zero: int | None = None,
             offload: str | None = None) -> MemoryEstimate:
    """One rank's peak GPU allocation for `data_parallel` ranks sharing the ZeRO partitions: the model
    states plus the largest of the moments A, B and C (module docstring). Gradients by DeepSpeed's
    optimizer (engine._do_optimizer_sanity_check picks it):
    - ZeRO-0 (torch's AdamW; 16-bit: FP16_UnfusedOptimizer): the parameters' .grad, from the backward
      pass to the step, reduced at its end in ZERO0_REDUCE_ELEMENTS buckets; a 16-bit step makes fp32
      copies of all of them (4 bytes/param) for the fp32 master weights;
    - ZeRO-1 bf16 (BF16_Optimizer, because we ask for fp32 accumulation): a flat fp32 gradient buffer
      for the whole model, allocated once and zeroed after every step (4 bytes/param, not partitioned),
      and the bf16 .grad (2) from the backward pass to the step;
    - ZeRO-1 without bf16, ZeRO-2 (DeepSpeedZeroOptimizer, overlap_comm, contiguous_gradients): each
      gradient is copied into one of two reduce buckets (reduce_bucket_size elements in the training
      precision) as it is produced; a full bucket is flattened, converted to the fp32 communication type
      and reduced into this rank's partition (fp32 for bf16, where fp32 accumulation keeps it compact;
      else the training precision, flattened and converted to fp32 for the step); the buckets come with
      the first gradient and go at the end of the backward pass, the partition comes with the first full
      bucket and goes after the step: neither exists when the backward pass starts;
    - ZeRO-3 (DeepSpeedZeroOptimizer_Stage3): an fp32 gradient partition (the training precision for
      fp16) and one fp32 reduce bucket, both allocated once; the step works on an fp32 copy of the
      partition. Above one rank the forward pass gathers each layer's parameters, and they stay gathered
      until the backward pass uses them again (stage3_max_reuse_distance, 1e9 elements), bounded by the
      whole model; one rank uses its partition in place.
    With grad_accum > 1 the gradients of earlier micro-batches stay through the next forward pass.
    Offloaded optimizer states, master weights and fp32 gradients live in pinned host memory (cpu_gib)
    and DeepSpeed's CPU Adam runs there."""
    t, m = config.train, config.model
    stage = t.zero if zero is None else zero
    off = t.offload if offload is None else offload
    psi = m.n_params / t.pipeline_stages
    nd = max(1, data_parallel)
    half = t.precision in ("bf16", "fp16")
    bf16 = t.precision == "bf16"
    p_bytes = 2 if half else 4
    offload_opt = off in ("optimizer", "optimizer+params") and stage >= 1
    offload_params = off == "optimizer+params" and stage == 3
    bucket = bucket_elements(config)
    largest = largest_param_elements(config)
    shard = psi / nd  # a partition's elements

    params = p_bytes * psi / (nd if stage >= 3 else 1)
    optim = optimizer_bytes_per_param(config, stage) * (shard if stage >= 1 else psi)
    cpu = 0.0
    if offload_opt:
        # master weights, moments and the fp32 gradient partition move to pinned host memory
        cpu += optim + 4 * shard
        optim = 0.0
    if offload_params:
        cpu += params
        params = 0.0

    acts = _activations(config)
    # the optimizer step's temporary: Adam's sqrt(v) buffer, or the fp64 copy of one gradient (slice)
    # that ZeRO's gradient norm takes
    step_temp = max(4 * shard, 8 * min(largest, shard))
    kept_grads = 0.0   # gradient buffers that outlive the step
    kept_buffers = 0.0
    reduce_temp: float
    pipeline = t.pipeline_stages > 1
    # gradients of earlier micro-batches stay through the next forward pass
    accumulating = t.grad_accum > 1 or pipeline
    if stage == 0 or (stage == 1 and bf16 and not offload_opt):
        # the parameters' .grad in the training precision, reduced after the backward pass
        g16 = p_bytes * psi
        if bf16 and (stage == 1 or pipeline):
            # BF16_Optimizer: a flat accumulation buffer for the whole model (fp32 from ZeRO-1 on, where
            # we ask for it), its partition converted to fp32 for the step where it is bf16
            kept_grads = (4 if stage == 1 else 2) * psi
            reduce_temp = 4 * largest  # each bf16 .grad converted as it is added in
            step = _Moment("C", g16 + (4 * psi if stage == 0 else 0), 0.0, step_temp)
        else:
            reduce_temp = min(psi, ZERO0_REDUCE_ELEMENTS) * (p_bytes + (4 if half else 0))
            # 16-bit: FP16_UnfusedOptimizer gives every fp32 master weight an fp32 copy of its gradient
            step = _Moment("C", g16 + (4 * psi if half else 0), 0.0, 4 * psi)
        # the reduction (and BF16_Optimizer's accumulation) runs once the backward pass is over
        moments = [_Moment("A", g16 if accumulating else 0.0, acts.start, 0.0),
                   _Moment("B", g16, acts.backward, 0.0), _Moment("B", g16, 0.0, reduce_temp), step]
    elif stage in (1, 2):
        compact = bf16  # fp32 accumulation: reduced straight into an fp32 partition
        partition = (4 if compact else p_bytes) * shard
        buckets = 2 * bucket * p_bytes  # double-buffered with overlap_comm
        # a full bucket (or one oversized gradient) flattened, then converted to fp32 for the reduction
        staging = float(max(bucket, largest) * (p_bytes + (4 if half else 0)))
        if offload_opt:
            # gradients go to pinned host memory through a one-parameter staging buffer on the GPU
            partition, step_temp = 0.0, 0.0
            staging += largest * p_bytes
        incoming = largest * p_bytes  # the gradient autograd just produced, not yet in a bucket
        # Accumulating micro-batches: ZeRO-2 reduces every micro-batch into its partition, ZeRO-1 keeps
        # the parameters' .grad until the last one.
        carried = (partition if stage == 2 else p_bytes * psi) if accumulating else 0.0
        moments = [_Moment("A", carried, acts.start, 0.0),
                   _Moment("B", carried, acts.first_grad, buckets + incoming),
                   _Moment("B", partition + (carried if stage == 1 else 0.0), acts.backward,
                           buckets + staging + incoming)]
        # The step reads an fp32 partition: the compact one as it is; else the partition is flattened
        # (and converted to fp32 for 16-bit training) before the gradients it was made of are freed.
        if compact or offload_opt:
            moments.append(_Moment("C", partition, 0.0, step_temp))
        else:
            flat = p_bytes * shard + (4 * shard if half else 0)
            moments += [_Moment("C", partition, 0.0, flat), _Moment("C", 4 * shard, 0.0, step_temp)]
    else:
        gacc = 2 if t.precision == "fp16" else 4
        kept_grads = 0.0 if offload_opt else gacc * shard
        kept_buffers = 4.0 * bucket  # the fp32 reduce bucket
        gathered = 0.0
        if nd > 1 or offload_params:
            gathered = p_bytes * min(psi, ZERO3_MAX_LIVE_ELEMENTS + ZERO3_PREFETCH_ELEMENTS + largest)
        # the bucket's gradients converted to fp32 and flattened for the reduce-scatter, its output, and
        # the gradients of the module in flight
        staging = 8 * bucket + 4 * bucket / nd + p_bytes * largest
        moments = [_Moment("A", 0.0, acts.start, gathered),
                   _Moment("B", 0.0, acts.backward, gathered + staging),
                   _Moment("C", 0.0, 0.0, 0.0 if offload_opt else 4 * shard + step_temp)]
    peak = max(moments, key=lambda moment: moment.total)
    return MemoryEstimate(stage, off, nd, params / GIB, (kept_grads + peak.grads) / GIB, optim / GIB,
                          peak.activations / GIB, (kept_buffers + peak.buffers) / GIB + WORKSPACE_GIB,
                          RUNTIME_GIB, cpu / GIB, peak.name)


@dataclass(frozen=True)
class _Activations:
    start: float       # moment A: all activations kept, the loss's log-softmax and its gradients
    first_grad: float  # the first parameter gradient: activations and the logits' gradient
    backward: float    # moment B: bounded by all activations plus one layer's gradients in flight


def _activations(config: TrainConfig) -> _Activations:
    """Activations of one rank, as the built-in decoder keeps them for backward. Per token and layer in
    the training precision: the block's input, both layer norms' outputs, q/k/v, the attention output,
    the residual sum, the MLP's input to GELU and its output: 16 d values (Korthikanti et al. 2022 count
    34 bytes with dropout masks; the model has no dropout, and its fused attention (SDPA: flash or
    memory-efficient kernels) keeps no s x s score matrix, only the fp32 log-sum-exp per head), plus
    the layer norms' fp32 mean and rstd. The head keeps its norm's input and output and the fp32
    log-probabilities of the loss (lm_loss casts the logits to fp32: 4 bytes per logit). The backward pass
    starts with the log-probabilities and their two fp32 gradients (12 bytes per logit together); the
    first parameter gradient (the head's) comes once those are gone, beside the logits' gradient in the
    training precision. With recomputation each segment keeps only its input, and the backward pass
    rebuilds one segment at a time. Pipelines keep up to `stages` micro-batches in flight on the first
    stage."""
    t, m = config.train, config.model
    act_bytes = 2 if t.precision in ("bf16", "fp16") else 4
    tokens = m.seq_len * t.micro_batch
    h = m.d_model
    layers = m.n_layer / t.pipeline_stages
    in_flight = t.pipeline_stages if t.pipeline_stages > 1 else 1
    full_layer = float(tokens * (16 * h * act_bytes + (4 + m.n_head) * 4))
    kept: float
    if m.activation_checkpointing:
        k = min(m.checkpoint_interval, max(1, math.ceil(layers)))
        kept = math.ceil(layers / k) * tokens * h * act_bytes * in_flight
        rebuilt = k * full_layer
    else:
        kept = layers * full_layer * in_flight
        rebuilt = 0.0
    logits = tokens * m.vocab_size
    # head norm in/out and stats, token ids and targets (int64)
    head = tokens * (2 * h * act_bytes + 8 + 16)
    return _Activations(start=kept + head + 12 * logits,
                        first_grad=kept + rebuilt + head + act_bytes * logits,
                        backward=kept + rebuilt + full_layer + head)


def activation_bytes(config: TrainConfig) -> float:
    """Activations of one rank at their own peak, the start of the backward pass (see _activations)."""
    return _activations(config).start


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
