"""Helpers for the batch-inference tests (importable by name: tests/ is on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CORPUS = [f"The quick brown fox {i} jumps over the lazy dog number {i * 7 % 13}." for i in range(200)]


def run_local(out: Path, tasks: Sequence[int]) -> None:
    """The array tasks of a run, one after the other in this machine's Python (a one-shot run)."""
    for t in tasks:
        proc = subprocess.run([sys.executable, "-m", "hpc_aidc.node.infer.run", str(out), "--task", str(t)],
                              capture_output=True, text=True, check=False, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def write_plan_for(out: Path, model: str, input_path: Path, tasks: int, rows_per_shard: int,
                   output_format: str = "jsonl", **params: object) -> None:
    from hpc_aidc.data.infer_inputs import plan_inputs
    from hpc_aidc.formats.infer_plan import make_plan, write_plan
    from hpc_aidc.formats.model_source import resolve_model
    from hpc_aidc.spec.infer import parse_infer_params

    p = parse_infer_params(**params)
    plan = make_plan(plan_inputs(input_path, "text", rows_per_shard), resolve_model(model, p.task), p, tasks,
                     output_format, "/nonexistent-energy-store")
    write_plan(out, plan)
