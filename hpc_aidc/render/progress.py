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
    stops = [r for r in records if r.get("event") == "stop"]
    return {"step": last["step"], "max_steps": last["max_steps"], "loss": last["loss"],
            "tokens_per_s": sum(tps) / len(tps) if tps else None,
            "eta_s": 0.0 if stops else (last["max_steps"] - last["step"]) * mean_step, "restarts": restarts,
            "finished": any(r.get("event") == "end" for r in records),
            "stopped": stops[-1].get("reason") if stops else None, **validation_progress(records)}


def validation_progress(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The last validation ([eval]) and the best one so far; {} when the run does not validate."""
    evals = [r for r in records if r.get("event") == "eval" and "val_loss" in r]
    if not evals:
        return {}
    last = evals[-1]
    best = min(evals, key=lambda r: (r["val_loss"], r["step"]))
    return {"val_loss": last["val_loss"], "val_ppl": last.get("val_ppl"), "val_step": last["step"],
            "best_val_loss": best["val_loss"], "best_step": best["step"]}


def validation_line(progress: dict[str, Any]) -> str | None:
    """`hpcai status`'s validation line, or None when the run does not validate."""
    if progress.get("val_loss") is None:
        return None
    return (f"loss {progress['val_loss']:.4f} (perplexity {progress['val_ppl']:.2f}) at step {progress['val_step']}; "
            f"best {progress['best_val_loss']:.4f} at step {progress['best_step']}")


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
