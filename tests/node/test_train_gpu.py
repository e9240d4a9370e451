"""The GPU tier of the training tests (run where a GPU machine is lent; skipped elsewhere). One local rank
per GPU, up to two (NCCL refuses two ranks on one GPU), started the way srun starts them (SLURM_* variables),
without Slurm. A single rank still trains through DeepSpeed's bf16 + ZeRO-2 optimizer and checkpoints on
the GPU; with two, ZeRO-2 also partitions the optimizer state and reduces gradients over NCCL:

- exactness: a run killed after a checkpoint and started again ends like an uninterrupted one. With
  `deterministic = true` (deterministic kernels, cuBLAS workspace) the losses are bitwise equal; without
  it, GPU kernels that reduce with atomics may differ in the last bits, and the documented tolerance is
  1e-2 relative on every step's loss (bf16 training);
- the planner: torch's peak allocation on the device stays within the estimate for this many data-parallel
  ranks (a job hpcai accepts does not run out of memory), and the estimate is not far above it (hpcai
  does not refuse what fits)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# One rank per GPU, two where there are two: NCCL refuses two ranks on the same GPU.
RANKS = min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 0

LOSS_TOLERANCE = 1e-2   # relative, per logged step, bf16 without deterministic kernels
MAX_STEPS = 120         # enough steps after the checkpoint at 20 for the kill to land mid-run on a fast GPU
PLAN_BAND = 1.35        # the estimate may exceed the measured peak allocation by at most this factor

RANK = """
import json, sys
from hpc_aidc.formats.train_task import TrainTask
from hpc_aidc.node.train.start import train_task
from hpc_aidc.spec.train import parse_train_config
config = parse_train_config(json.loads(sys.argv[1]))
print(json.dumps(train_task(TrainTask(config=config, folder_pattern=sys.argv[2]))))
"""


def _visible(ranks: int) -> str:
    """The first `ranks` GPUs this process sees, as CUDA_VISIBLE_DEVICES for the ranks."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    tokens = [t.strip() for t in seen.split(",")] if seen else [str(i) for i in range(ranks)]
    return ",".join(tokens[:ranks])


def _start(config: dict[str, Any], folder: Path, job_id: str) -> list[subprocess.Popen[bytes]]:
    """The ranks of one run. Each writes its output to <folder>/<job_id>.<run>.rank<r>.log, a file rather
    than a pipe: a rank never blocks on a full pipe while the test waits for its checkpoint."""
    procs = []
    run = len(list(folder.glob(f"{job_id}.*.rank0.log")))
    for rank in range(RANKS):
        env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(RANKS), "SLURM_LOCALID": str(rank),
               "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": job_id,
               "SLURM_NTASKS_PER_NODE": str(RANKS), "CUDA_VISIBLE_DEVICES": _visible(RANKS),
               "PYTHONUNBUFFERED": "1"}
        with (folder / f"{job_id}.{run}.rank{rank}.log").open("wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-c", RANK, json.dumps(config), str(folder / "%j")],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs: list[subprocess.Popen[bytes]], folder: Path, job_id: str, timeout: float = 900) -> None:
    for p in procs:
        p.wait(timeout=timeout)
    codes = [p.returncode for p in procs]
    assert codes == [0] * len(procs), (codes, _logs(folder, job_id))


def _logs(folder: Path, job_id: str) -> str:
    """The end of every rank's log of job `job_id`, for a failure's message."""
    return "\n".join(f"== {f.name}\n{f.read_text(errors='replace')[-4000:]}"
                     for f in sorted(folder.glob(f"{job_id}.*.rank*.log")))


def _events(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _losses(folder: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in _events(folder) if "loss" in e}


def _interrupted(config: dict[str, Any], folder: Path, job_id: str, after: int) -> None:
    """Run, kill every rank once a checkpoint at step >= `after` exists, then run again to the end."""
    procs = _start(config, folder, job_id)
    deadline = time.monotonic() + 900
    while not any(e.get("event") == "checkpoint" and e["step"] >= after for e in _events(folder / job_id)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), ("no checkpoint",
                                                                                      _logs(folder, job_id))
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    _wait(_start(config, folder, job_id), folder, job_id)


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_resumed_gpu_run_matches_the_uninterrupted_one(tmp_path: Path, deterministic: bool) -> None:
    config = {"model": {"preset": "tiny", "n_layer": 4}, "optimizer": {"warmup_steps": 5},
              "train": {"max_steps": MAX_STEPS, "micro_batch": 8, "zero": 2, "precision": "bf16",
                        "deterministic": deterministic},
              "checkpoint": {"every": 10, "keep_last": 2}}
    _wait(_start(config, tmp_path, "101"), tmp_path, "101")
    _interrupted(config, tmp_path, "102", after=20)
    reference, resumed = _losses(tmp_path / "101"), _losses(tmp_path / "102")
    starts = [e for e in _events(tmp_path / "102") if e.get("event") == "start"]
    assert len(starts) == 2 and 0 < starts[1]["step"] < MAX_STEPS
    assert resumed.keys() == reference.keys()
    if deterministic:
        assert resumed == reference
    else:
        worst = max(abs(resumed[s] - reference[s]) / abs(reference[s]) for s in reference)
        assert worst <= LOSS_TOLERANCE, worst


def test_the_planner_brackets_the_peak_allocation(tmp_path: Path) -> None:
    from hpc_aidc.spec.memory import estimate
    from hpc_aidc.spec.train import parse_train_config

    doc = {"model": {"preset": "350m"}, "train": {"max_steps": 6, "micro_batch": 4, "zero": 2,
                                                   "precision": "bf16"},
           "checkpoint": {"every": 100}}
    _wait(_start(doc, tmp_path, "201"), tmp_path, "201")
    summary = json.loads((tmp_path / "201" / "summary.json").read_text())
    measured = summary["gpu_max_allocated_gib"]
    planned = estimate(parse_train_config(doc), data_parallel=RANKS)
    assert measured <= planned.allocated_gib, (measured, planned)  # never accepts a job that runs out
    assert planned.allocated_gib <= PLAN_BAND * measured, (measured, planned)  # nor refuses one that fits
    assert summary["mfu"] is None or 0 < summary["mfu"] < 1
