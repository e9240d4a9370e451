"""The training config: one TOML file (model, data, optimizer, schedule, checkpointing, parallelism),
overridden by flags, validated here before anything is submitted (pure)."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError, SpecError


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    vocab_size: int = 256
    seq_len: int = 64
    # Recompute each segment of `checkpoint_interval` blocks in the backward pass instead of keeping its
    # activations (per layer by default; the pipeline's activation_checkpoint_interval).
    activation_checkpointing: bool = False
    checkpoint_interval: int = 1

    @property
    def n_params(self) -> int:
        """Decoder parameters: token + position embeddings, 12 d^2 per block, final norm, untied head."""
        d = self.d_model
        return 2 * self.vocab_size * d + self.seq_len * d + self.n_layer * (12 * d * d + 13 * d) + 2 * d

    @property
    def n_embedding_params(self) -> int:
        """Token and position embeddings: lookups, no matrix multiply (the untied head is one)."""
        return (self.vocab_size + self.seq_len) * self.d_model


# Presets: tiny for tests, then the usual GPT sizes for real clusters.
# 1.3b and 7b recompute activations per layer by default: without it their activations alone outgrow an
# 80 GiB GPU at useful micro-batches (`hpcai plan` shows both).
PRESETS: dict[str, dict[str, int | bool]] = {
    "tiny": {"n_layer": 4, "n_head": 4, "d_model": 128, "vocab_size": 256, "seq_len": 64},
    "small": {"n_layer": 12, "n_head": 12, "d_model": 768, "vocab_size": 50304, "seq_len": 1024},
    "350m": {"n_layer": 24, "n_head": 16, "d_model": 1024, "vocab_size": 50304, "seq_len": 2048},
    "1.3b": {"n_layer": 24, "n_head": 32, "d_model": 2048, "vocab_size": 50304, "seq_len": 2048,
             "activation_checkpointing": True},
    "7b": {"n_layer": 32, "n_head": 32, "d_model": 4096, "vocab_size": 50304, "seq_len": 4096,
           "activation_checkpointing": True},
}


@dataclass(frozen=True)
class DataConfig:
    kind: str = "synthetic"      # synthetic | zarr
    path: str = ""
    seed: int = 1234


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 3e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 10
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainSchedule:
    max_steps: int = 100
    micro_batch: int = 8
    grad_accum: int = 1
    seed: int = 42
    log_every: int = 1
    # auto: bf16 on GPUs the site profile lists as bf16-capable, else fp32 (resolve_precision)
    precision: str = "auto"     # auto | fp32 | bf16 | fp16
    tf32: bool = True           # fp32 matmuls and convolutions on tensor cores (GPUs only)
    # GPUs: deterministic kernels where torch has them (cuBLAS workspace, no nondeterministic ops), for
    # resumes that repeat the uninterrupted run exactly; slower. CPU runs are deterministic anyway.
    deterministic: bool = False
    # How long a rank waits in a collective before the job fails (NCCL/gloo process-group timeout).
    # Covers the slowest checkpoint write: other ranks wait in its barrier.
    collective_timeout_s: int = 600
    zero: int = 2
    offload: str = "none"       # none | optimizer | optimizer+params
    pipeline_stages: int = 1
    entry: str = ""             # package.module:function for a user model
    # Stop once the validation loss (the training loss when [eval] is off) is at or below this; 0: never.
    target_loss: float = 0.0


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 50
    keep_last: int = 2
    max_restarts: int = 5
    # Seconds between Slurm's warning signal and the kill; 0: derived at submit from the model, the
    # step and the checkpoint write time (measured by the last run with the same shape, see spec.grace).
    grace_s: int = 0


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0              # validate every K steps (and at the last step); 0: no validation
    batches: int = 8            # held-out micro-batches per data-parallel rank per validation
    # Fraction of a Zarr store's samples held out for validation (the same ones for every run of the
    # store, never trained on); only when `every` > 0. Synthetic data draws unseen generator samples.
    holdout: float = 0.01


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainSchedule = field(default_factory=TrainSchedule)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig,
                              "train": TrainSchedule, "checkpoint": CheckpointConfig, "eval": EvalConfig}
ZERO_STAGES = (0, 1, 2, 3)
OFFLOADS = ("none", "optimizer", "optimizer+params")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MIN_COLLECTIVE_TIMEOUT_S = 30


def _section(cls: type, table: Mapping[str, Any], name: str, source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"Expected keys of [{name}] from {sorted(fields)}. Got unknown {unknown} instead in {source}. "
            "Fix the spelling or remove them."
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        default = fields[key].default
        kind = type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != isinstance(default, bool):
            raise ConfigError(
                f"Expected {name}.{key} to be a {kind.__name__}. Got {value!r} instead in {source}."
            )
        values[key] = value
    return cls(**values)


def parse_train_config(data: Mapping[str, Any], source: str = "<config>",
                       overrides: Mapping[str, Any] | None = None, data_path: str | None = None) -> TrainConfig:
    """Validate a decoded config; `overrides` are flag values for [train] (None = not given) and
    `data_path` (--data) trains on a packed Zarr store instead of what [data] says."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"Expected sections from {sorted(_SECTIONS)}. Got unknown {unknown} instead in {source}. "
            "Fix the spelling or remove them."
        )
    tables = {name: dict(data.get(name, {})) for name in _SECTIONS}
    preset = tables["model"].get("preset", "tiny")
    if preset not in PRESETS:
        raise ConfigError(f"Expected model.preset from {sorted(PRESETS)}. Got {preset!r} instead in {source}.")
    tables["model"] = {**PRESETS[preset], **tables["model"]}
    for key, value in (overrides or {}).items():
        if value is not None:
            tables["train"][key] = value
    if data_path:
        tables["data"].update(kind="zarr", path=data_path)
    parsed = {name: _section(cls, tables[name], name, source) for name, cls in _SECTIONS.items()}
    config = TrainConfig(**parsed)
    _check(config, source)
    return config


def _check(c: TrainConfig, source: str) -> None:
    t, m = c.train, c.model
    if t.zero not in ZERO_STAGES:
        raise SpecError(f"Expected --zero from {ZERO_STAGES}. Got {t.zero} instead.")
    if t.offload not in OFFLOADS:
        raise SpecError(f"Expected --offload from {OFFLOADS}. Got {t.offload!r} instead.")
    if t.offload == "optimizer+params" and t.zero != 3:
        raise SpecError(f"Expected --zero 3 with --offload optimizer+params. Got --zero {t.zero}. "
                        "Parameter offload needs ZeRO-3.")
    if t.offload != "none" and t.zero == 0:
        raise SpecError("Expected --zero 1, 2 or 3 with --offload. Got --zero 0. Offload is a ZeRO feature.")
    if t.precision not in PRECISIONS:
        raise SpecError(f"Expected --precision from {PRECISIONS}. Got {t.precision!r} instead.")
    for name in ("max_steps", "micro_batch", "grad_accum", "pipeline_stages", "log_every"):
        if getattr(t, name) < 1:
            raise SpecError(f"Expected {name} >= 1. Got {getattr(t, name)} instead in {source}.")
    if t.collective_timeout_s < MIN_COLLECTIVE_TIMEOUT_S:
        raise SpecError(f"Expected train.collective_timeout_s >= {MIN_COLLECTIVE_TIMEOUT_S}. Got "
                        f"{t.collective_timeout_s} instead in {source}. Allow for the slowest checkpoint write.")
    if m.checkpoint_interval < 1:
        raise SpecError(f"Expected model.checkpoint_interval >= 1 (blocks per recomputed segment). Got "
                        f"{m.checkpoint_interval} instead in {source}.")
    if c.checkpoint.grace_s < 0:
        raise SpecError(f"Expected checkpoint.grace_s >= 0 (0: derived). Got {c.checkpoint.grace_s} instead in "
                        f"{source}.")
    if m.d_model % m.n_head:
        raise SpecError(f"Expected model.d_model divisible by model.n_head. Got {m.d_model} and {m.n_head}.")
    if t.pipeline_stages > 1:
        if m.n_layer % t.pipeline_stages:
            raise SpecError(
                f"Expected --pipeline-stages to divide model.n_layer ({m.n_layer}). Got {t.pipeline_stages}. "
                f"Use one of {[d for d in range(1, m.n_layer + 1) if m.n_layer % d == 0]}."
            )
        if t.zero > 1:
            raise SpecError(f"Expected --zero 0 or 1 with pipeline parallelism (DeepSpeed's limit). "
                            f"Got --zero {t.zero}.")
    if c.checkpoint.every < 1 or c.checkpoint.keep_last < 1:
        raise SpecError(f"Expected checkpoint.every and checkpoint.keep_last >= 1 in {source}.")
    _check_eval(c, source)
    if c.data.kind not in ("synthetic", "zarr"):
        raise SpecError(f"Expected data.kind 'synthetic' or 'zarr'. Got {c.data.kind!r} instead in {source}.")
    if c.data.kind == "zarr" and not c.data.path:
        raise SpecError(f"Expected data.path with data.kind = 'zarr' in {source}. Add the dataset's path.")


def _check_eval(c: TrainConfig, source: str) -> None:
    e = c.eval
    if e.every < 0:
        raise SpecError(f"Expected eval.every >= 0 (0: no validation). Got {e.every} instead in {source}.")
    if e.batches < 1:
        raise SpecError(f"Expected eval.batches >= 1 (held-out micro-batches per rank). Got {e.batches} instead "
                        f"in {source}.")
    if not 0.0 < e.holdout < 1.0:
        raise SpecError(f"Expected eval.holdout between 0 and 1 (a fraction of the samples). Got {e.holdout} "
                        f"instead in {source}. Use e.g. 0.01.")
    if c.train.target_loss < 0:
        raise SpecError(f"Expected --target-loss (train.target_loss) >= 0 (0: no target). Got "
                        f"{c.train.target_loss} instead in {source}.")


def resolve_precision(config: TrainConfig, gpu_precisions: tuple[str, ...] | None) -> TrainConfig:
    """`precision = "auto"` made concrete: bf16 where the job's GPUs compute it (the site profile's
    gpu_types.X.precisions), fp32 elsewhere (CPU jobs, older GPUs). Other values stay as they are."""
    if config.train.precision != "auto":
        return config
    chosen = "bf16" if gpu_precisions is not None and "bf16" in gpu_precisions else "fp32"
    return dataclasses.replace(config, train=dataclasses.replace(config.train, precision=chosen))


def check_world(config: TrainConfig, world_size: int, gpu_precisions: tuple[str, ...] | None, *,
                ranks_per_node: int | None = None, gpus_per_node: int = 0) -> None:
    """Checks that need the allocation's shape: batch composition, one GPU per rank, and what the GPUs
    can compute."""
    t = config.train
    if gpus_per_node and ranks_per_node is not None and ranks_per_node > gpus_per_node:
        raise SpecError(
            f"Expected at most one training rank per GPU ({gpus_per_node} per node). Got --ntasks-per-node "
            f"{ranks_per_node} instead. Drop --ntasks-per-node (one rank per GPU) or ask for more GPUs."
        )
    if world_size % t.pipeline_stages:
        raise SpecError(
            f"Expected the number of ranks ({world_size}) to be a multiple of --pipeline-stages "
            f"({t.pipeline_stages}). Change --nodes/--ntasks-per-node or the stages."
        )
    if t.pipeline_stages > 1 and t.grad_accum < t.pipeline_stages:
        raise SpecError(
            f"Expected --grad-accum >= --pipeline-stages ({t.pipeline_stages}) so the pipeline has enough "
            f"micro-batches to fill. Got {t.grad_accum}."
        )
    if gpu_precisions is not None and t.precision not in gpu_precisions:
        raise SpecError(
            f"Expected a precision these GPUs support ({', '.join(gpu_precisions)}). Got {t.precision!r}. "
            "Pick one of those with --precision."
        )


def global_batch(config: TrainConfig, world_size: int) -> int:
    dp = world_size // config.train.pipeline_stages
    return config.train.micro_batch * config.train.grad_accum * dp


def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None,
                      data_path: str | None = None) -> TrainConfig:
    """A TOML config, or YAML when the file ends in .yaml/.yml (the same tables as mappings)."""
    return parse_train_config(read_config_document(path), source=str(path), overrides=overrides,
                              data_path=data_path)


def read_config_document(path: str | Path) -> dict[str, Any]:
    """The config file decoded, not yet validated (a sweep sets its trials' values in it first)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"Expected a config file at {p}. Got no such file. Pass --config FILE.") from None
    return _parse_yaml(text, p) if p.suffix in (".yaml", ".yml") else _parse_toml(text, p)


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Expected valid TOML in {path}. Got: {exc}.") from None


def _parse_yaml(text: str, path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"Expected valid YAML in {path}. Got: {problem}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Expected a mapping of tables (model:, train:, ...) in {path}. Got a "
                          f"{type(data).__name__} instead.")
    return data
