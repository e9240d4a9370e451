#!/usr/bin/env python3
"""The memory planner against a real GPU: short single-rank training runs of the built-in model (bf16,
6 steps, the last one checkpointed), each in a fresh process started the way srun starts a rank (SLURM_*
variables, hpc_aidc.node.train.train_task), the way tests/node/test_train_gpu.py does. For each run it prints
one JSON line: torch's peak allocation (summary.json's gpu_max_allocated_gib), spec.memory's estimate for one
data-parallel rank (its parts, the moment it takes them at, allocated_gib) and planned / measured, which the
GPU tier's planner test wants within [1, 1.35]. With $OUT set, everything also goes to $OUT/planner_sweep.json.

The runs stop starting once --budget-s (default 200) is spent; the rest are listed as skipped. Exits 1 when a
run fails or an estimate falls outside the band, else 0.

Usage: python3 scripts/gpu_planner_sweep.py [--dry-run] [--tiny] [--budget-s S]
  --dry-run  print the configs and their estimates, run nothing (works anywhere)
  --tiny     the same plumbing with the tiny preset and 2 steps (a smoke test that runs on a CPU)
Needs torch and DeepSpeed importable, and hpc_aidc (the repository root on PYTHONPATH or installed)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc_aidc.spec.memory import estimate  # noqa: E402
from hpc_aidc.spec.train import parse_train_config  # noqa: E402

# (preset, ZeRO stage, micro-batch); the GPU tier's planner test runs 350m, ZeRO-2, micro-batch 4
SWEEP = [("350m", 1, 4), ("350m", 2, 2), ("350m", 2, 8), ("350m", 3, 4), ("small", 2, 8)]
MAX_STEPS = 6
PLAN_BAND = 1.35      # as tests/node/test_train_gpu.py
RUN_TIMEOUT_S = 150   # one run, start-up included (350m, ZeRO-2, micro-batch 4 took ~23 s on an H200)
MIN_LEFT_S = 30       # no run starts with less of the budget left

RANK = """
import json, sys
from hpc_aidc.formats.train_task import TrainTask
from hpc_aidc.node.train.start import train_task
from hpc_aidc.spec.train import parse_train_config
config = parse_train_config(json.loads(sys.argv[1]))
print(json.dumps(train_task(TrainTask(config=config, folder_pattern=sys.argv[2]))))
"""


def config_doc(preset: str, zero: int, micro_batch: int, tiny: bool = False) -> dict[str, Any]:
    return {"model": {"preset": "tiny" if tiny else preset},
            "train": {"max_steps": 2 if tiny else MAX_STEPS, "micro_batch": micro_batch, "zero": zero,
                      "precision": "bf16"},
            "checkpoint": {"every": 100}}


def planned(doc: dict[str, Any]) -> dict[str, Any]:
    e = estimate(parse_train_config(doc), data_parallel=1)
    return {"peak": e.peak, "params_gib": e.params_gib, "grads_gib": e.grads_gib, "optimizer_gib": e.optimizer_gib,
            "activations_gib": e.activations_gib, "buffers_gib": e.buffers_gib, "allocated_gib": e.allocated_gib}


def rank_env(job_id: str) -> dict[str, str]:
    """One rank on this node's first visible GPU, as srun would describe it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    return {**os.environ, "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
            "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": job_id,
            "SLURM_NTASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": visible, "PYTHONUNBUFFERED": "1"}


def run_one(doc: dict[str, Any], work: Path, job_id: str, timeout: float) -> dict[str, Any]:
    """Train one config in a fresh process; its summary.json, or why there is none."""
    log = work / f"{job_id}.log"
    started = time.monotonic()
    try:
        with log.open("wb") as out:
            proc = subprocess.run([sys.executable, "-c", RANK, json.dumps(doc), str(work / "%j")],
                                  env=rank_env(job_id), stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False)
        code: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        code = f"timed out after {timeout:.0f} s"
    result: dict[str, Any] = {"run_s": round(time.monotonic() - started, 1)}
    summary = work / job_id / "summary.json"
    if code == 0 and summary.exists():
        result["summary"] = json.loads(summary.read_text())
    else:
        result["error"] = f"exit {code}"
        result["log_tail"] = log.read_text(errors="replace")[-3000:]
    shutil.rmtree(work / job_id, ignore_errors=True)  # its checkpoint: ~6 GB for 350m
    return result


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        info["deepspeed"] = md.version("deepspeed")
    except md.PackageNotFoundError:
        info["deepspeed"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the configs and estimates only")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset, 2 steps (runs on a CPU)")
    parser.add_argument("--budget-s", type=float, default=200.0, help="start no run after this many seconds")
    args = parser.parse_args()
    started = time.monotonic()
    docs = [config_doc(preset, zero, mb, args.tiny) for preset, zero, mb in SWEEP]
    report: dict[str, Any] = {"machine": None if args.dry_run else machine(), "band": PLAN_BAND, "runs": []}
    print(json.dumps({"machine": report["machine"]}), flush=True)
    failed = False
    work = Path(tempfile.mkdtemp(prefix="planner-sweep-"))
    try:
        for i, doc in enumerate(docs):
            row: dict[str, Any] = {"preset": doc["model"]["preset"], "zero": doc["train"]["zero"],
                                   "micro_batch": doc["train"]["micro_batch"], "config": doc, "plan": planned(doc)}
            left = args.budget_s - (time.monotonic() - started)
            if args.dry_run:
                row["status"] = "dry-run"
            elif left < MIN_LEFT_S:
                row["status"] = f"skipped: {left:.0f} s of the budget left"
            else:
                result = run_one(doc, work, str(301 + i), min(RUN_TIMEOUT_S, left))
                row["run_s"] = result["run_s"]
                summary = result.get("summary")
                measured = summary.get("gpu_max_allocated_gib") if summary else None
                row["measured_gib"] = measured
                if summary:
                    row["reserved_gib"] = summary.get("gpu_max_reserved_gib")
                    row["tokens_per_s"] = summary.get("tokens_per_s")
                if summary is None:
                    row["status"] = "failed: " + result["error"]
                    row["log_tail"] = result["log_tail"]
                    failed = True
                elif measured is None:
                    row["status"] = "ran without a GPU: nothing measured"
                else:
                    ratio = row["plan"]["allocated_gib"] / measured
                    row["ratio"] = round(ratio, 4)
                    row["bracketed"] = 1.0 <= ratio <= PLAN_BAND
                    row["status"] = "ok" if row["bracketed"] else "outside the band"
                    failed = failed or not row["bracketed"]
            report["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - started, 1)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "planner_sweep.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"wall_s": report["wall_s"], "failed": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
