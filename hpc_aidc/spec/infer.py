"""Batch inference parameters (pure): what is asked of the model, validated before anything is submitted,
and the hash that keys every completion record (another model or other parameters never mix into an
existing output)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from hpc_aidc.errors import SpecError, expected

TASKS = ("generate", "score", "embed")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INPUT_KINDS = ("zarr", "jsonl", "text", "parquet")


@dataclass(frozen=True)
class InferParams:
    """Everything that decides an output row besides the model and the input row."""

    task: str = "generate"
    batch_size: int = 16
    batch_tokens: int | None = None  # a token budget per batch instead of a row count
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on GPUs that do it, fp32 on CPU
    max_input_tokens: int | None = None  # None: the model's context
    max_error_rate: float = 0.1
    normalize: bool | None = None  # embed: unit-length vectors (None: as the model says: its Normalize module)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def parse_infer_params(**values: Any) -> InferParams:
    """Validated parameters; SpecError (exit 2) naming the flag and a fix."""
    p = InferParams(**{k: v for k, v in values.items() if v is not None})
    if p.task not in TASKS:
        raise SpecError(expected(f"--task from {', '.join(TASKS)}", p.task, "Pick one."))
    if p.batch_size < 1:
        raise SpecError(expected("--batch-size >= 1", p.batch_size, "Pass a positive row count."))
    if p.batch_tokens is not None and p.batch_tokens < 1:
        raise SpecError(expected("--batch-tokens >= 1", p.batch_tokens, "Pass a positive token budget."))
    if p.max_new_tokens < 1:
        raise SpecError(expected("--max-new-tokens >= 1", p.max_new_tokens, "Pass how many tokens to generate."))
    if not (p.temperature >= 0.0 and math.isfinite(p.temperature)):
        raise SpecError(expected("--temperature >= 0 (0: greedy)", p.temperature, "Pass e.g. 0.7."))
    if p.top_k < 0:
        raise SpecError(expected("--top-k >= 0 (0: off)", p.top_k, "Pass e.g. 50."))
    if not 0.0 < p.top_p <= 1.0:
        raise SpecError(expected("--top-p in (0, 1]", p.top_p, "Pass e.g. 0.9."))
    if p.precision not in PRECISIONS:
        raise SpecError(expected(f"--precision from {', '.join(PRECISIONS)}", p.precision, "Pick one."))
    if p.max_input_tokens is not None and p.max_input_tokens < 1:
        raise SpecError(expected("--max-input-tokens >= 1", p.max_input_tokens, "Pass a positive count."))
    if not 0.0 <= p.max_error_rate <= 1.0:
        raise SpecError(expected("--max-error-rate in [0, 1]", p.max_error_rate, "Pass e.g. 0.05."))
    if p.normalize is not None and p.task != "embed":
        raise SpecError(expected("--normalize/--no-normalize with --task embed only", f"--task {p.task}",
                                 "Leave the flag out."))
    return p


def params_hash(params: InferParams, extra: dict[str, Any] | None = None) -> str:
    """sha256 of the parameters (and what else decides the output, e.g. the input field), canonical JSON."""
    values = params.to_json()
    if values["normalize"] is None:  # unset: the hash of runs from before the flag existed
        del values["normalize"]
    doc = {"params": values, **(extra or {})}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def shard_range(task: int, tasks: int, shards: int) -> range:
    """The contiguous input shards of array task `task` of `tasks` (every task computes the same split)."""
    return range(task * shards // tasks, (task + 1) * shards // tasks)


def compact_ranges(indices: list[int]) -> str:
    """`0,2-4,7`: Slurm's --array syntax for a set of task indices."""
    out: list[str] = []
    values = sorted(set(indices))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def windows(indices: list[int], max_array_size: int) -> list[tuple[int, list[int]]]:
    """Task indices split into arrays whose index *values* stay below Slurm's MaxArraySize: each
    window is (offset, [index - offset ...]) with every value in 0..max_array_size-1."""
    if max_array_size < 1:
        raise SpecError(expected("MaxArraySize >= 1", max_array_size, "Ask an admin to check slurm.conf."))
    out: dict[int, list[int]] = {}
    for i in sorted(set(indices)):
        offset = (i // max_array_size) * max_array_size
        out.setdefault(offset, []).append(i - offset)
    return sorted(out.items())
