"""`hpcai submit train` on the real dev cluster (DeepSpeed on CPU with gloo): every ZeRO stage and a
pipeline train with a falling loss; a requeued run (by an admin, and by the job itself on Slurm's
warning signal) ends with exactly the weights and losses of an uninterrupted one; one rank with double
accumulation matches two ranks. All jobs run side by side and are waited for once."""

from __future__ import annotations

import json
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
"""

RUNS: dict[str, tuple[list[str], int, int]] = {
    # name: (flags, steps, checkpoint every)
    "zero1": (["--zero", "1"], 20, 10),
    "zero3_offload": (["--zero", "3", "--offload", "optimizer"], 20, 10),
    "pipeline": (["--zero", "1", "--pipeline-stages", "2", "--grad-accum", "2"], 20, 10),
    "uninterrupted": (["--zero", "2"], 120, 20),
    "admin_requeue": (["--zero", "2"], 120, 20),
    "self_requeue": (["--zero", "2"], 120, 20),
    "one_rank": (["--zero", "2", "--nodes", "1", "--grad-accum", "2"], 120, 20),
}


def _metrics(folder: Path) -> list[dict[str, Any]]:
    if not (folder / "metrics.jsonl").exists():
        return []
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _losses(folder: Path) -> dict[int, float]:
    """Loss per step; a step redone after a restart keeps its last value."""
    return {r["step"]: r["loss"] for r in _metrics(folder) if "loss" in r}


def _wait_for_step(folder: Path, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(_losses(folder), default=0) >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"{folder} never reached step {step}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    from conftest import HPCAI

    configs = tmp_path_factory.mktemp("train")
    jobs: dict[str, dict[str, Any]] = {}
    for name, (flags, steps, every) in RUNS.items():
        path = configs / f"{name}.toml"
        path.write_text(CONFIG.format(steps=steps, every=every))
        nodes = [] if "--nodes" in flags else ["--nodes", "2"]
        proc = subprocess.run([*HPCAI, "submit", "train", *nodes, "--ntasks-per-node", "1", "-A", "physics",
                               "-J", f"t-{name}", "--config", str(path), "--json", *flags],
                              capture_output=True, text=True, cwd="/tmp", check=False)
        assert proc.returncode == 0, proc.stderr
        jobs[name] = json.loads(proc.stdout)
        jobs[name]["folder"] = Path(jobs[name]["folder"])

    # Interrupt two of the identical runs mid-way: one as an admin would, one through Slurm's warning.
    admin, self_ = jobs["admin_requeue"], jobs["self_requeue"]
    _wait_for_step(admin["folder"], 45)
    subprocess.run(["scontrol", "requeue", admin["job_id"]], check=True)
    subprocess.run(["scontrol", "update", f"jobid={admin['job_id']}", "StartTime=now"], check=False)
    _wait_for_step(self_["folder"], 45)
    subprocess.run(["scancel", "--signal=USR2", self_["job_id"]], check=True)

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
    for name in ("zero1", "zero3_offload", "pipeline", "uninterrupted"):
        job = runs[name]
        assert job["status"]["state"] == "COMPLETED", (name, job["status"])
        losses = _losses(job["folder"])
        steps = sorted(losses)
        assert steps[-1] == RUNS[name][1]
        assert losses[steps[-1]] < 0.9 * losses[steps[0]], (name, losses)
        summary = json.loads((job["folder"] / "summary.json").read_text())
        assert summary["tokens"] > 0 and summary["world_size"] == 2
        assert (job["folder"] / "config.json").exists() and (job["folder"] / "deepspeed.json").exists()


def test_requeued_runs_end_exactly_like_the_uninterrupted_one(runs: dict[str, dict[str, Any]]) -> None:
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    reference = runs["uninterrupted"]
    ref_losses = _losses(reference["folder"])
    ref_weights = get_fp32_state_dict_from_zero_checkpoint(str(reference["folder"] / "checkpoints"))
    assert ref_weights, "zero_to_fp32 found no weights"
    for name in ("admin_requeue", "self_requeue"):
        job = runs[name]
        assert job["status"]["state"] == "COMPLETED", (name, job["status"])
        events = [r for r in _metrics(job["folder"]) if r.get("event") == "start"]
        assert [e["restarts"] for e in events] == [0, 1], (name, events)
        assert 0 < events[1]["step"] < 120, events  # resumed from a checkpoint, not from scratch
        assert _losses(job["folder"]) == ref_losses  # bitwise: same floats at every step
        weights = get_fp32_state_dict_from_zero_checkpoint(str(job["folder"] / "checkpoints"))
        assert weights.keys() == ref_weights.keys()
        assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights), name
        assert job["status"]["progress"]["step"] == 120
    self_events = [r.get("event") for r in _metrics(runs["self_requeue"]["folder"])]
    assert "requeue" in self_events


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
