"""Validation and stop rules in `hpcai submit train` on the real dev cluster (DeepSpeed on CPU, gloo,
2 ranks): validation loss and perplexity in metrics.jsonl, the summary and `hpcai status`; `--target-loss`
stops a run early with the reason in its summary (on the validation loss, and on the training loss
without [eval]); a run requeued mid-way validates and keeps its best checkpoint exactly like an
uninterrupted one. All jobs run side by side and are waited for once."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_kit import release_requeued
from conftest import HPCAI, RunHpcai

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
every = 20
keep_last = 1
{eval}
{data}"""

EVAL = """
[eval]
every = {every}
batches = 2
holdout = 0.02
"""

ZARR = """
[data]
kind = "zarr"
path = "{path}"
"""

# name: (steps, eval every (0: off), Zarr data, extra flags)
RUNS: dict[str, tuple[int, int, bool, list[str]]] = {
    "val_target": (200, 5, True, ["--target-loss", "2.5"]),
    "train_target": (200, 0, False, ["--target-loss", "5.0"]),
    "uninterrupted": (200, 20, True, []),
    "requeued": (200, 20, True, []),
    # Two pipeline stages: every stage gets the loss of one pass of the held-out batches through the pipe.
    "pipeline": (20, 10, True, ["--zero", "1", "--pipeline-stages", "2", "--grad-accum", "2"]),
}


def _metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evals(folder: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in _metrics(folder) if r.get("event") == "eval"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    import numpy as np

    configs = tmp_path_factory.mktemp("eval")
    tokens = configs / "tokens.npy"
    np.save(tokens, ((np.arange(120_000) * 7 + 3) % 251).astype(np.uint16))  # a learnable corpus
    store = configs / "corpus.zarr"
    subprocess.run([*HPCAI, "data", "pack", str(tokens), "-o", str(store), "--seq-len", "65", "--vocab-size", "256",
                    "--shard-mib", "0.05"], check=True, capture_output=True)
    jobs: dict[str, dict[str, Any]] = {}
    for name, (steps, every, zarr, flags) in RUNS.items():
        path = configs / f"{name}.toml"
        path.write_text(CONFIG.format(steps=steps, eval=EVAL.format(every=every) if every else "",
                                      data=ZARR.format(path=store) if zarr else ""))
        proc = subprocess.run([*HPCAI, "submit", "train", "--nodes", "2", "--ntasks-per-node", "1", "-A", "physics",
                               "-J", f"e-{name}", "--config", str(path), "--json", *flags],
                              capture_output=True, text=True, cwd="/tmp", check=False)
        assert proc.returncode == 0, proc.stderr
        jobs[name] = json.loads(proc.stdout)
        jobs[name]["folder"] = Path(jobs[name]["folder"])

    # Requeue one run as an admin would, once it has validated (and saved a best) a few times.
    job_id = jobs["requeued"]["job_id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and max(_evals(jobs["requeued"]["folder"]), default=0) < 60:
        time.sleep(0.1)
    assert 60 <= max(_evals(jobs["requeued"]["folder"])) < 200, "the run was not requeued mid-way"
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    release_requeued(job_id)

    for job in jobs.values():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            out = subprocess.run([*HPCAI, "status", job["job_id"], "--json"], capture_output=True, text=True,
                                 check=False)
            assert out.returncode == 0, out.stderr
            job["status"] = json.loads(out.stdout)
            if job["status"]["state"] not in {"PENDING", "RUNNING", "REQUEUED", "COMPLETING"} and \
                    job["status"]["partition"]:
                break
            time.sleep(1)
        summary = job["folder"] / "summary.json"
        job["summary"] = json.loads(summary.read_text()) if summary.exists() else None
    return jobs


def test_target_loss_on_validation_stops_the_run_early(runs: dict[str, dict[str, Any]], hpcai: RunHpcai) -> None:
    job = runs["val_target"]
    assert job["status"]["state"] == "COMPLETED", job["status"]
    summary = job["summary"]
    step = summary["steps"]
    assert 0 < step < 200 and step % 5 == 0, summary  # stopped at a validation step, well before max_steps
    assert summary["stopped"] == f"target_loss 2.5 reached at step {step} (validation loss {summary['val_loss']:.4f})"
    assert summary["target_metric"] == "val_loss" and summary["val_loss"] <= 2.5
    evals = _evals(job["folder"])
    assert sorted(evals) == list(range(5, step + 1, 5))  # every 5 steps, and no further
    assert all(loss > 2.5 for s, loss in evals.items() if s < step)
    assert summary["best_step"] == step and summary["best_val_loss"] == evals[step]
    best = job["folder"] / "checkpoints" / "best"
    assert json.loads((best / "best.json").read_text())["step"] == step
    assert (best / f"step{step:08d}" / "COMPLETE").exists()
    # The stop has its own checkpoint: a requeue of the finished job would stay stopped.
    assert (job["folder"] / "checkpoints" / "latest").read_text().strip() == f"step{step:08d}"
    # metrics.jsonl: loss and perplexity; `hpcai status` (JSON and text) shows both and why it stopped.
    row = next(r for r in _metrics(job["folder"]) if r.get("event") == "eval" and r["step"] == step)
    assert row["val_ppl"] == pytest.approx(2.718281828 ** row["val_loss"])
    progress = job["status"]["progress"]
    assert progress["val_loss"] == evals[step] and progress["val_step"] == step
    assert progress["best_val_loss"] == evals[step] and progress["stopped"] == summary["stopped"]
    text = hpcai("status", job["job_id"]).stdout
    assert f"validation:    loss {evals[step]:.4f} (perplexity" in text
    assert f"stopped:       {summary['stopped']}" in text


def test_target_loss_without_eval_goes_by_the_training_loss(runs: dict[str, dict[str, Any]]) -> None:
    job = runs["train_target"]
    assert job["status"]["state"] == "COMPLETED", job["status"]
    summary = job["summary"]
    assert 0 < summary["steps"] < 200 and summary["target_metric"] == "loss"
    losses = {r["step"]: r["loss"] for r in _metrics(job["folder"]) if "loss" in r}
    reached = min(s for s, loss in losses.items() if loss <= 5.0)
    assert summary["stopped"] == f"target_loss 5 reached at step {reached} (training loss {losses[reached]:.4f})"
    assert summary["steps"] in (reached, reached + 1)  # the loss is read a step later, without a sync
    assert "val_loss" not in summary and not _evals(job["folder"])
    assert not (job["folder"] / "checkpoints" / "best").exists()


def test_a_requeued_run_validates_and_keeps_its_best_like_an_uninterrupted_one(
        runs: dict[str, dict[str, Any]]) -> None:
    ref, job = runs["uninterrupted"], runs["requeued"]
    for j in (ref, job):
        assert j["status"]["state"] == "COMPLETED", j["status"]
        assert j["summary"]["stopped"] is None and j["summary"]["steps"] == 200
    starts = [r for r in _metrics(job["folder"]) if r.get("event") == "start"]
    assert len(starts) == 2 and 0 < starts[1]["step"] < 200, starts  # resumed from a checkpoint
    resumed_at = starts[1]["step"]
    ref_evals, evals = _evals(ref["folder"]), _evals(job["folder"])
    assert sorted(ref_evals) == list(range(20, 201, 20)) and evals.keys() == ref_evals.keys()
    # The same held-out batches and the same model: the same losses (exactly up to the resume; after it
    # within the last bits, as the Zarr training losses themselves, see test_train_cluster).
    assert all(evals[s] == ref_evals[s] for s in evals if s <= resumed_at)
    assert all(evals[s] == pytest.approx(ref_evals[s], rel=1e-6) for s in evals)
    ref_best = json.loads((ref["folder"] / "checkpoints/best/best.json").read_text())
    best = json.loads((job["folder"] / "checkpoints/best/best.json").read_text())
    assert best["step"] == ref_best["step"] and best["val_loss"] == pytest.approx(ref_best["val_loss"], rel=1e-6)
    assert ref_best["val_loss"] == min(ref_evals.values())
    for key in ("best_step", "val_step"):
        assert job["summary"][key] == ref["summary"][key], key
    # Rotation (keep_last = 1) left one periodic checkpoint beside the best.
    dirs = sorted(p.name for p in (job["folder"] / "checkpoints").iterdir() if p.is_dir())
    assert dirs == ["best", "step00000200"]


def test_a_pipeline_validates_and_keeps_its_best(runs: dict[str, dict[str, Any]]) -> None:
    job = runs["pipeline"]
    assert job["status"]["state"] == "COMPLETED", job["status"]
    evals = _evals(job["folder"])
    assert sorted(evals) == [10, 20] and evals[20] < evals[10]
    assert job["summary"]["best_step"] == 20 and job["summary"]["val_loss"] == evals[20]
    best = json.loads((job["folder"] / "checkpoints/best/best.json").read_text())
    assert best["step"] == 20 and (job["folder"] / "checkpoints/best/step00000020/COMPLETE").exists()
