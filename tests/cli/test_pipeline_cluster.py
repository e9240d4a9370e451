"""`hpcai submit pipeline` on the real dev cluster: a data pack, a training run, inference with the
trained model (submitted by a launcher job once training is done) and a command run in order; a failing
middle stage gets the last one cancelled by Slurm (never left pending) and the
pipeline's status says why; resubmitted after the fix, only the missing stages run. Mistakes anywhere
in the file submit nothing."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from cluster_kit import jobs_named, json_output, submit_json, tiny_train_config
from conftest import RunHpcai, assert_clean_error, wait_until

from hpc_aidc.data.spec import MANIFEST_NAME

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("cluster")]

TRAIN = tiny_train_config(optimizer={"lr": 0.003, "warmup_steps": 2},
                          train={"max_steps": 6, "micro_batch": 4, "zero": 1},
                          checkpoint={"every": 3, "keep_last": 1})

WHERE = 'account = "physics"\npartition = "cpu"\ntime = "00:10:00"\n'

PACK = """
[stage.pack]
kind = "data-pack"
inputs = ["tokens.npy"]
out = "corpus.zarr"
seq_len = 65
vocab_size = 256
shard_mib = 0.05
""" + WHERE


def _pipeline(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'[pipeline]\nname = "{name}"\n{body}')
    return path


def _wait(hpcai: RunHpcai, name: str, timeout: float = 400) -> dict[str, Any]:
    """The pipeline's status once none of its stages is pending, running or unknown."""
    seen: list[dict[str, Any]] = []

    def ended() -> bool:
        seen.append(json_output(hpcai("status", name, "--json")))
        return all(s["state"] not in ("PENDING", "RUNNING", "UNKNOWN") for s in seen[-1]["stages"])

    wait_until(f"pipeline {name} to end", ended, timeout, interval=3, detail=lambda: seen[-1])
    return seen[-1]


def _states(status: dict[str, Any]) -> dict[str, str]:
    return {s["stage"]: s["state"] for s in status["stages"]}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    import numpy as np

    np.save(tmp_path / "tokens.npy", ((np.arange(20_000) * 7 + 3) % 251).astype(np.uint16))
    (tmp_path / "train.toml").write_text(TRAIN)
    tmp_path.chmod(0o755)
    return tmp_path


def test_pack_train_infer_run_complete_in_order_and_a_resubmission_skips_them(folder: Path,
                                                                             hpcai: RunHpcai) -> None:
    name = f"p4-{uuid.uuid4().hex[:8]}"
    (folder / "prompts.txt").write_text("hello world\nthe quick brown fox\n")
    # inference runs the model the train stage made (so a launcher job submits it once training is
    # done); the last stage checks that inference finished first (its completion record)
    path = _pipeline(folder, name, PACK + """
[stage.train]
kind = "train"
after = ["pack"]
config = "train.toml"
data = "{stage.pack.out}"
nodes = 1
ntasks_per_node = 1
""" + WHERE + """
[stage.infer]
kind = "infer"
after = ["train"]
model = "{stage.train.job_dir}"
input = "prompts.txt"
output = "generated"
max_new_tokens = 4
""" + WHERE + """
[stage.check]
kind = "run"
after = ["infer"]
command = ["test", "-s", "{stage.infer.out}/done/000000.json"]
""" + WHERE)
    dry = hpcai("submit", "pipeline", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # the pack array and its finalize job, train, infer's launcher, check
    assert dry.stdout.count("#!/bin/bash") == 5, dry.stdout
    assert "#SBATCH --dependency='afterok:<pack>'" in dry.stdout
    assert "# stage infer (infer): submitted by this launcher job once its inputs exist" in dry.stdout
    assert "#SBATCH --kill-on-invalid-dep=yes" in dry.stdout
    assert hpcai("status", name).returncode == 2  # a dry run records and submits nothing

    submitted = {s["stage"]: s for s in submit_json(hpcai, "pipeline", str(path))["stages"]}
    assert [s["reused"] for s in submitted.values()] == [False, False, False, False]
    assert submitted["infer"]["launcher"] and submitted["check"]["jobs"] == []
    # the train job waits for the pack's finalize job, the check for the train job
    deps = subprocess.run(["squeue", "-h", "-o", "%i %E", "-j",
                           ",".join(j for s in submitted.values() for j in s["jobs"])],
                          capture_output=True, text=True, check=True).stdout
    assert f"{submitted['train']['jobs'][0]} afterok:{submitted['pack']['jobs'][1]}" in deps, deps
    status = _wait(hpcai, name)
    assert _states(status) == {"pack": "COMPLETED", "train": "COMPLETED", "infer": "COMPLETED",
                               "check": "COMPLETED"}, status
    assert (folder / "corpus.zarr" / MANIFEST_NAME).is_file()
    jobs = {s["stage"]: s["jobs"] for s in status["stages"]}
    assert jobs["infer"][0] == submitted["infer"]["jobs"][0] and len(jobs["infer"]) == 2  # launcher, array
    text = hpcai("status", name).stdout
    assert "STAGE" in text and submitted["train"]["jobs"][0] in text

    stages = submit_json(hpcai, "pipeline", str(path))["stages"]
    assert [s["reused"] for s in stages] == [True, True, True, True]
    assert [s["jobs"] for s in stages] == [jobs[s["stage"]] for s in stages]


def test_a_failing_stage_cancels_what_waits_for_it_and_a_fixed_resubmission_runs_the_rest(
        folder: Path, hpcai: RunHpcai) -> None:
    name = f"pfail-{uuid.uuid4().hex[:8]}"
    body = PACK + """
[stage.middle]
kind = "run"
after = ["pack"]
command = ["python3", "-c", "import sys; sys.exit({code})"]
""" + WHERE + """
[stage.last]
kind = "run"
after = ["middle"]
command = ["true"]
""" + WHERE + """
[stage.always]
kind = "run"
after = ["middle"]
dependency = "afterany"
command = ["true"]
""" + WHERE
    path = _pipeline(folder, name, body.replace("{code}", "1"))
    jobs = {s["stage"]: s["jobs"] for s in submit_json(hpcai, "pipeline", str(path))["stages"]}
    status = _wait(hpcai, name)
    assert _states(status) == {"pack": "COMPLETED", "middle": "FAILED", "last": "CANCELLED",
                               "always": "COMPLETED"}, status
    notes = {s["stage"]: s["note"] for s in status["stages"]}
    assert notes["last"] == "cancelled: dependency middle failed"
    assert "cancelled: dependency middle failed" in hpcai("status", name).stdout

    path.write_text(path.read_text().replace("sys.exit(1)", "sys.exit(0)"))
    rerun = {s["stage"]: s for s in submit_json(hpcai, "pipeline", str(path))["stages"]}
    assert {n for n, s in rerun.items() if s["reused"]} == {"pack"}
    assert rerun["pack"]["jobs"] == jobs["pack"]
    assert all(set(rerun[n]["jobs"]).isdisjoint(jobs[n]) for n in ("middle", "last", "always"))
    status = _wait(hpcai, name)
    assert set(_states(status).values()) == {"COMPLETED"}, status


@pytest.mark.parametrize(("last_stage", "needles"), [
    ('after = ["first"]\nnodes = 99\ncommand = ["true"]', ["at most 2 nodes", "'cpu'"]),
    ('after = ["first"]\ngpus = 1\ncommand = ["true"]', ["'gpus'", "gpus_per_node"]),
    ('after = ["nowhere"]\ncommand = ["true"]', ["'nowhere'", "not a stage"]),
    ('after = ["first"]\ncommand = ["true"]\ndependency = "afternotok"', ["afterok", "afterany"]),
    ('after = ["last"]\ncommand = ["true"]', ["other stages' names"]),
    ('after = ["first"]\ncommand = ["{stage.pack.job_dir}"]', ["{stage.pack.out}"]),
    ('after = ["first"]', ["command in [stage.last]"]),
])
def test_a_mistake_in_any_stage_submits_nothing(folder: Path, hpcai: RunHpcai, last_stage: str,
                                                needles: list[str]) -> None:
    name = f"pbad-{uuid.uuid4().hex[:8]}"
    job_name = f"{name}-j"
    path = _pipeline(folder, name, PACK + f"""
[stage.first]
kind = "run"
after = ["pack"]
job_name = "{job_name}"
command = ["true"]
""" + WHERE + f"""
[stage.last]
kind = "run"
job_name = "{job_name}"
{last_stage}
""" + WHERE)
    proc = hpcai("submit", "pipeline", str(path))
    assert_clean_error(proc, *needles)
    assert jobs_named(job_name) == ""
    assert not (folder / "corpus.zarr").exists()  # the pack stage wrote nothing either
    assert hpcai("status", name).returncode == 2  # no record


def test_a_cycle_and_an_unknown_pipeline(folder: Path, hpcai: RunHpcai) -> None:
    path = _pipeline(folder, "pcycle", """
[stage.a]
kind = "run"
after = ["b"]
command = ["true"]
[stage.b]
kind = "run"
after = ["a"]
command = ["true"]
""")
    assert_clean_error(hpcai("submit", "pipeline", str(path)), "cycle", "a -> b")
    assert_clean_error(hpcai("status", "no-such-pipeline"), "pipeline name or directory")
    # an infer stage whose model is made by an earlier stage is checked as far as it can be at once
    path = _pipeline(folder, "pinfer", """
[stage.train]
kind = "train"
config = "train.toml"
nodes = 1
ntasks_per_node = 1
job_name = "pinfer-train"
""" + WHERE + """
[stage.infer]
kind = "infer"
after = ["train"]
model = "{stage.train.job_dir}"
input = "prompts.txt"
output = "out"
max_concurrent = 0
""" + WHERE)
    assert_clean_error(hpcai("submit", "pipeline", str(path)), "--max-concurrent >= 1")
    assert jobs_named("pinfer-train") == ""
