"""`hpcai sweep show`: one row per trial, as a table, JSON or CSV (pure).

Per trial: its overrides, Slurm's state (a failed trial is FAILED, never complete), the steps it reached,
the final and best validation loss ([eval]; else the final training loss), training tokens/s, GPU-hours
(of its latest run, from accounting), GPU kWh (over all its runs, from the energy summaries) and the loss
drop per kWh: (the loss at step 1 - the best validation loss, or the final training loss without
[eval]) / kWh. The best trial (lowest such loss among completed ones) is marked."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpc_aidc.render.progress import validation_progress
from hpc_aidc.render.table import format_table
from hpc_aidc.spec.sweep import describe

COLUMNS = ("trial", "job_id", "state", "overrides", "step", "final_val_loss", "best_val_loss", "final_loss",
           "tokens_per_s", "gpu_hours", "kwh", "loss_drop_per_kwh", "stopped", "best")


@dataclass(frozen=True)
class TrialResult:
    index: int
    job_id: str
    overrides: dict[str, Any]
    state: str                          # Slurm's, of the latest run
    summary: dict[str, Any] | None      # summary.json of its last run, if it ended cleanly
    events: tuple[dict[str, Any], ...]  # metrics.jsonl
    gpu_hours: float
    kwh: float | None


def trial_rows(results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    rows = [_row(r) for r in results]
    ranked = [row for row in rows if row["state"] == "COMPLETED" and _score(row) is not None]
    if ranked:
        best = min(ranked, key=lambda row: (_score(row), row["trial"]))
        best["best"] = True
    return rows


def _score(row: dict[str, Any]) -> float | None:
    value = row["best_val_loss"] if row["best_val_loss"] is not None else row["final_loss"]
    return None if value is None else float(value)


def _row(r: TrialResult) -> dict[str, Any]:
    events = list(r.events)
    losses = [e for e in events if "loss" in e and "step" in e]
    summary = r.summary or {}
    val = validation_progress(events)
    final_loss = losses[-1]["loss"] if losses else None
    reached = val.get("best_val_loss", final_loss)
    first = losses[0]["loss"] if losses and losses[0]["step"] == 1 else None
    drop = (first - reached) / r.kwh if first is not None and reached is not None and r.kwh else None
    return {"trial": r.index, "job_id": r.job_id, "state": r.state, "overrides": r.overrides,
            "step": losses[-1]["step"] if losses else 0, "final_val_loss": val.get("val_loss"),
            "best_val_loss": val.get("best_val_loss"), "final_loss": final_loss,
            "tokens_per_s": summary.get("tokens_per_s_training") or summary.get("tokens_per_s"),
            "gpu_hours": r.gpu_hours, "kwh": r.kwh, "loss_drop_per_kwh": drop,
            "stopped": summary.get("stopped"), "best": False}


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    body = [("*" if row["best"] else "", row["trial"], row["job_id"], row["state"], describe(row["overrides"]),
             row["step"], _num(row["final_val_loss"], 4), _num(row["best_val_loss"], 4), _num(row["final_loss"], 4),
             _num(row["tokens_per_s"], 0), _num(row["gpu_hours"], 3), _num(row["kwh"], 4),
             _num(row["loss_drop_per_kwh"], 1)) for row in rows]
    return format_table(["BEST", "TRIAL", "JOB", "STATE", "OVERRIDES", "STEP", "FINAL VAL", "BEST VAL",
                         "FINAL LOSS", "TOKENS/S", "GPU-H", "KWH", "LOSS/KWH"], body,
                        right=(1, 5, 6, 7, 8, 9, 10, 11, 12))


def sweep_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else describe(row[c]) if c == "overrides" else row[c]
                         for c in COLUMNS])
    return out.getvalue()
