"""`hpcai submit train` on the real dev cluster (DeepSpeed on CPU with gloo): every ZeRO stage and a
pipeline train with a falling loss; a requeued run (by an admin, and by the job itself on Slurm's
warning signal) ends with exactly the weights and losses of an uninterrupted one; one rank with double
accumulation matches two ranks. All jobs run side by side and are waited for once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RunHpcai

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("cluster")]

CONFIG = """
[model]
preset = "tiny"
n_layer = 2
{model}
[optimizer]
lr = 0.003
warmup_steps = 5
[train]
max_steps = {steps}
micro_batch = 8
zero = 2
[checkpoint]
every = {every}
keep_last = 2
{data}"""

ZARR_DATA = """
[data]
kind = "zarr"
path = "{path}"
"""

RUNS: dict[str, tuple[list[str], int, int]] = {
    # name: (flags, steps, checkpoint every)
    "zero1": (["--zero", "1"], 20, 10),
    "zero3_offload": (["--zero", "3", "--offload", "optimizer"], 20, 10),
    "pipeline": (["--zero", "1", "--pipeline-stages", "2", "--grad-accum", "2"], 20, 10),
    # Ranks started by OpenMPI's mpirun inside the allocation and discovered through mpi4py.
    "mpirun": (["--zero", "1", "--launcher", "mpirun"], 20, 10),
    "uninterrupted": (["--zero", "2"], 120, 20),
    "admin_requeue": (["--zero", "2"], 120, 20),
    "self_requeue": (["--zero", "2"], 120, 20),
    "one_rank": (["--zero", "2", "--nodes", "1", "--grad-accum", "2"], 120, 20),
    # A packed Zarr token store instead of the synthetic stream: the loader's position is checkpointed.
    "zarr_uninterrupted": (["--zero", "2"], 80, 20),
    "zarr_requeue": (["--zero", "2"], 80, 20),
    # Optimizer offload: DeepSpeed's CPU Adam, whose bias-correction state a checkpoint does not hold.
    "offload_uninterrupted": (["--zero", "2", "--offload", "optimizer"], 60, 20),
    "offload_requeue": (["--zero", "2", "--offload", "optimizer"], 60, 20),
}


# Runs whose model recomputes its activations per layer (torch's non-reentrant checkpoint; for the pipeline,
# DeepSpeed's activation_checkpoint_interval; with ZeRO-3 under zero.Init's partitioned parameters).
RECOMPUTE = {"pipeline", "zero3_offload"}


def _metrics(folder: Path) -> list[dict[str, Any]]:
    if not (folder / "metrics.jsonl").exists():
        return []
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _losses(folder: Path) -> dict[int, float]:
    """Loss per step; a step redone after a restart keeps its last value."""
    return {r["step"]: r["loss"] for r in _metrics(folder) if "loss" in r}


def _freeze(job_id: str) -> None:
    """SIGSTOP every process of the job on this host (all dev cluster nodes are)."""
    mark = f"SLURM_JOB_ID={job_id}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGSTOP)
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    import numpy as np
    from conftest import HPCAI

    configs = tmp_path_factory.mktemp("train")
    tokens = configs / "tokens.npy"
    np.save(tokens, ((np.arange(120_000) * 7 + 3) % 251).astype(np.uint16))  # a learnable corpus
    store = configs / "corpus.zarr"
    subprocess.run([*HPCAI, "data", "pack", str(tokens), "-o", str(store), "--seq-len", "65", "--vocab-size", "256",
                    "--shard-mib", "0.05"], check=True, capture_output=True)
    jobs: dict[str, dict[str, Any]] = {}
    for name, (flags, steps, every) in RUNS.items():
        path = configs / f"{name}.toml"
        data = ZARR_DATA.format(path=store) if name.startswith("zarr") else ""
        model = "activation_checkpointing = true" if name in RECOMPUTE else ""
        path.write_text(CONFIG.format(steps=steps, every=every, data=data, model=model))
        nodes = [] if "--nodes" in flags else ["--nodes", "2"]
        proc = subprocess.run([*HPCAI, "submit", "train", *nodes, "--ntasks-per-node", "1", "-A", "physics",
                               "-J", f"t-{name}", "--config", str(path), "--json", *flags],
                              capture_output=True, text=True, cwd="/tmp", check=False)
        assert proc.returncode == 0, proc.stderr
        jobs[name] = json.loads(proc.stdout)
        jobs[name]["folder"] = Path(jobs[name]["folder"])

    # Interrupt runs mid-way, each as soon as it passes its step: two as an admin would (scontrol
    # requeue), one through Slurm's warning signal (the job checkpoints and requeues itself).
    def admin_requeue(job_id: str) -> None:
        # Freeze the job's processes first: a run goes on for up to KillWait after the requeue (submitit
        # lets SIGTERM pass), time enough for these small runs to reach their last step. SIGKILL ends them.
        _freeze(job_id)
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        held.append(job_id)

    def warn(job_id: str) -> None:
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        held.append(job_id)

    held: list[str] = []

    pending = {"admin_requeue": (45, admin_requeue), "self_requeue": (45, warn), "zarr_requeue": (30, admin_requeue),
               "offload_requeue": (25, admin_requeue)}
    deadline = time.monotonic() + 600
    while pending and time.monotonic() < deadline:
        for name, (step, action) in list(pending.items()):
            if max(_losses(jobs[name]["folder"]), default=0) >= step:
                action(jobs[name]["job_id"])
                del pending[name]
        time.sleep(0.2)
    assert not pending, f"never reached their interruption step: {sorted(pending)}"
    # Slurm holds a requeued job two minutes before it is eligible; as an admin, release it once it is
    # back in the queue (the update is refused while the job is still ending).
    for job_id in held:
        for _ in range(120):
            state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
            if state.strip() == "PENDING" and subprocess.run(
                    ["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True).returncode == 0:
                break
            if state.strip() == "RUNNING":
                break
            time.sleep(0.5)

    for job in jobs.values():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            out = subprocess.run([*HPCAI, "status", job["job_id"], "--json"], capture_output=True, text=True,
                                 check=True)
            job["status"] = json.loads(out.stdout)
            if job["status"]["state"] not in {"PENDING", "RUNNING", "REQUEUED", "COMPLETING"} and \
                    job["status"]["partition"]:
                break
            time.sleep(1)
    return jobs


def test_every_zero_stage_and_the_pipeline_train(runs: dict[str, dict[str, Any]]) -> None:
    for name in ("zero1", "zero3_offload", "pipeline", "mpirun", "uninterrupted"):
        job = runs[name]
        assert job["status"]["state"] == "COMPLETED", (name, job["status"])
        losses = _losses(job["folder"])
        steps = sorted(losses)
        assert steps[-1] == RUNS[name][1]
        assert losses[steps[-1]] < 0.9 * losses[steps[0]], (name, losses)
        summary = json.loads((job["folder"] / "summary.json").read_text())
        assert summary["tokens"] > 0 and summary["world_size"] == 2
        assert (job["folder"] / "config.json").exists() and (job["folder"] / "deepspeed.json").exists()
        # A checkpointed step's loss is logged before the checkpoint: a run stopped right after a checkpoint
        # resumes at the next step, so a loss logged later would be missing from its curve.
        rows = _metrics(job["folder"])
        for i, row in enumerate(rows):
            if row.get("event") == "checkpoint":
                assert any(r.get("step") == row["step"] and "loss" in r for r in rows[:i]), (name, row)


def _assert_resumed_exactly(job: dict[str, Any], reference: dict[str, Any], name: str) -> None:
    """The job was interrupted once, resumed from a checkpoint, and ended bitwise like the reference."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    steps = RUNS[name][1]
    ref_losses = _losses(reference["folder"])
    ref_weights = get_fp32_state_dict_from_zero_checkpoint(str(reference["folder"] / "checkpoints"))
    assert ref_weights, "zero_to_fp32 found no weights"
    assert job["status"]["state"] == "COMPLETED", (name, job["status"])
    events = [r for r in _metrics(job["folder"]) if r.get("event") == "start"]
    assert [e["restarts"] for e in events] == [0, 1], (name, events)
    assert 0 < events[1]["step"] < steps, events  # resumed from a checkpoint, not from scratch
    losses = _losses(job["folder"])
    assert losses.keys() == ref_losses.keys()
    assert losses == ref_losses, name  # the same loss curve, bitwise
    weights = get_fp32_state_dict_from_zero_checkpoint(str(job["folder"] / "checkpoints"))
    assert weights.keys() == ref_weights.keys()
    # Bitwise the uninterrupted weights, whether the run resumed from the checkpoint it wrote on Slurm's
    # warning or (admin requeue) from an older periodic one and redid the steps after it.
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights), name
    assert job["status"]["progress"]["step"] == steps


def test_requeued_runs_end_exactly_like_the_uninterrupted_one(runs: dict[str, dict[str, Any]]) -> None:
    for name in ("admin_requeue", "self_requeue"):
        _assert_resumed_exactly(runs[name], runs["uninterrupted"], name)
    self_events = [r.get("event") for r in _metrics(runs["self_requeue"]["folder"])]
    assert "requeue" in self_events


def test_a_requeued_offload_run_ends_exactly_like_the_uninterrupted_one(runs: dict[str, dict[str, Any]]) -> None:
    _assert_resumed_exactly(runs["offload_requeue"], runs["offload_uninterrupted"], "offload_requeue")


def test_one_rank_with_double_accumulation_matches_two_ranks(runs: dict[str, dict[str, Any]]) -> None:
    one, two = _losses(runs["one_rank"]["folder"]), _losses(runs["uninterrupted"]["folder"])
    assert one.keys() == two.keys()
    worst = max(abs(one[s] - two[s]) / abs(two[s]) for s in two)
    assert worst < 1e-4, worst  # same samples per step; only the reduction order differs


def test_progress_in_status_and_logs(runs: dict[str, dict[str, Any]], hpcai: RunHpcai) -> None:
    job = runs["zero1"]
    text = hpcai("status", job["job_id"]).stdout
    assert "progress:      step 20/20" in text
    log = hpcai("logs", job["job_id"]).stdout
    assert "step 20/20  loss" in log and "tokens/s" in log and "ETA" in log


def test_zarr_data_resumes_at_its_checkpointed_position(runs: dict[str, dict[str, Any]]) -> None:
    reference, requeued = runs["zarr_uninterrupted"], runs["zarr_requeue"]
    for job in (reference, requeued):
        assert job["status"]["state"] == "COMPLETED", job["status"]
    ref = _losses(reference["folder"])
    assert ref[80] < 0.9 * ref[1]
    starts = [r for r in _metrics(requeued["folder"]) if r.get("event") == "start"]
    assert len(starts) == 2 and 0 < starts[1]["step"] < 80
    resumed = _losses(requeued["folder"])
    assert resumed.keys() == ref.keys()
    assert all(resumed[s] == ref[s] for s in ref if s <= starts[1]["step"])
    # Same samples in the same order after the restart; the last bits may differ (see the issue notes).
    assert max(abs(resumed[s] - ref[s]) / ref[s] for s in ref) < 1e-6
