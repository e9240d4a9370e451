"""Where a batch-inference run stands (pure): shards done, failed, running, pending or missing, rows and
tokens, throughput and ETA, from the completion and failure records and the array tasks Slurm still
holds. A shard whose task is pending or running is never "missing" (retry would run it twice)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpc_aidc.spec.infer import shard_range


@dataclass(frozen=True)
class Progress:
    shards: int
    done: int
    failed: int
    running: int
    pending: int
    missing: int
    rows: int
    rows_done: int
    error_rows: int
    tokens: int
    rows_per_s: float | None
    tokens_per_s: float | None
    eta_s: float | None
    states: dict[int, str] = field(default_factory=dict)  # shard -> done|failed|running|pending|missing
    errors: dict[int, str] = field(default_factory=dict)  # failed shard -> its latest error

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def retryable(self) -> list[int]:
        return sorted(k for k, s in self.states.items() if s in ("failed", "missing"))


def task_of(shard: int, tasks: int, shards: int) -> int:
    return next(t for t in range(tasks) if shard in shard_range(t, tasks, shards))


def progress(shard_rows: Sequence[int], tasks: int, done: Mapping[int, Mapping[str, Any]],
             failures: Mapping[int, Sequence[Mapping[str, Any]]], partial: Mapping[int, int],
             active: Mapping[int, str]) -> Progress:
    n = len(shard_rows)
    states: dict[int, str] = {}
    errors: dict[int, str] = {}
    for k in range(n):
        if k in done:
            states[k] = "done"
            continue
        task_state = active.get(task_of(k, tasks, n))
        if task_state is not None:
            states[k] = "pending" if task_state == "PENDING" and not partial.get(k) else "running"
        elif failures.get(k):
            states[k] = "failed"
            errors[k] = str(failures[k][-1].get("error", ""))
        else:
            states[k] = "missing"
    rows_done = sum(int(r.get("rows", 0)) for r in done.values()) + sum(partial.get(k, 0) for k in range(n)
                                                                          if k not in done)
    tokens = sum(int(r.get("tokens_in", 0)) + int(r.get("tokens_out", 0)) for r in done.values())
    starts = [float(r["finished"]) - float(r.get("seconds", 0)) for r in done.values() if "finished" in r]
    ends = [float(r["finished"]) for r in done.values() if "finished" in r]
    span = (max(ends) - min(starts)) if starts else 0.0
    finished_rows = sum(int(r.get("rows", 0)) for r in done.values())
    rate = finished_rows / span if span > 0 else None
    tok_rate = tokens / span if span > 0 else None
    total = sum(shard_rows)
    eta = (total - rows_done) / rate if rate else None
    count = {s: sum(1 for v in states.values() if v == s) for s in ("done", "failed", "running", "pending",
                                                                     "missing")}
    return Progress(n, count["done"], count["failed"], count["running"], count["pending"], count["missing"],
                    total, rows_done, sum(int(r.get("error_rows", 0)) for r in done.values()), tokens,
                    rate, tok_rate, eta, states, errors)
