"""Training progress as text: one line per step for logs, and the status summary (pure)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from hpc_aidc.render.table import format_duration


def progress_line(record: dict[str, Any]) -> str:
    step, total = record.get("step", 0), record.get("max_steps", 0)
    tps = record.get("tokens_per_s") or 0.0
    eta = (total - step) * record["step_time_s"] if record.get("step_time_s") else 0.0
    return (f"step {step}/{total}  loss {record.get('loss', float('nan')):.4f}  "
            f"tokens/s {tps:,.0f}  ETA {format_duration(eta)}")


def read_metrics(lines: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return out


def training_progress(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest step, throughput and ETA, averaged over the last 20 steps; None if no step yet."""
    steps = [r for r in records if "loss" in r]
    if not steps:
        return None
    last = steps[-1]
    recent = [r["step_time_s"] for r in steps[-20:] if r.get("step_time_s")]
    mean_step = sum(recent) / len(recent) if recent else 0.0
    tps = [r["tokens_per_s"] for r in steps[-20:] if r.get("tokens_per_s")]
    restarts = max((r.get("restarts", 0) for r in records if r.get("event") == "start"), default=0)
    return {"step": last["step"], "max_steps": last["max_steps"], "loss": last["loss"],
            "tokens_per_s": sum(tps) / len(tps) if tps else None,
            "eta_s": (last["max_steps"] - last["step"]) * mean_step, "restarts": restarts,
            "finished": any(r.get("event") == "end" for r in records)}


def last_problem(records: list[dict[str, Any]]) -> str | None:
    """The one line a run left when it stopped on a failed checkpoint write, unless a later run started
    (after a requeue) since; None when there is nothing to report."""
    for record in reversed(records):
        if record.get("event") == "start":
            return None
        if record.get("event") == "checkpoint-failed" and record.get("message"):  # node.checkpoint.FAILED_EVENT
            return str(record["message"])
    return None


def bar(fraction: float, width: int = 30) -> str:
    """`[#########.....]` for a fraction in [0, 1]."""
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"
