"""`hpcai submit sweep` on the real dev cluster: a 4-trial sweep is ONE job array; every trial trains in
its own job directory (DeepSpeed on CPU, gloo, 2 ranks, simulated NVML for energy); one trial killed
mid-run (a rank dies) shows as FAILED, then finishes from its checkpoint after `scontrol requeue`;
`hpcai sweep show` has one row per trial (table, JSON, CSV) with the best one marked. A sweep that
sbatch refuses leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cluster_kit import json_output, release_requeued, submit_json, tiny_train_config
from conftest import RunHpcai, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("cluster")]

BASE = tiny_train_config(optimizer={"warmup_steps": 5}, train={"max_steps": 150, "zero": 2},
                         checkpoint={"every": 20, "keep_last": 1}, eval={"every": 30, "batches": 2})
KILLED = 2  # the trial whose rank is killed


def _rows(hpcai: RunHpcai, sweep_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json_output(hpcai("sweep", "show", sweep_id, "--json"))["trials"]
    return rows


def _steps(folder: Path) -> int:
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line).get("step", 0) for line in lines if '"loss"' in line), default=0)


def _kill_a_rank(job_id: str) -> None:
    """SIGKILL rank 1 of the array task, as a crash would (the nodes are processes of this machine)."""
    array, task = job_id.split("_")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        except OSError:
            continue
        if env.get("SLURM_ARRAY_JOB_ID") == array and env.get("SLURM_ARRAY_TASK_ID") == task and \
                env.get("SLURM_PROCID") == "1" and "hpc_aidc.node.sweep_trial" in \
                Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "):
            os.kill(int(pid), signal.SIGKILL)
            return
    raise AssertionError(f"no rank 1 of {job_id} found")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, hpcai: RunHpcai) -> dict[str, Any]:
    config = tmp_path_factory.mktemp("sweep") / "base.toml"
    config.write_text(BASE)
    sweep = submit_json(hpcai, "sweep", "--config", str(config), "-A", "physics", "--nodes", "2",
                        "-G", "1", "--precision", "fp32", "-J", "sweep-test",
                        "--grid", "optimizer.lr=[1e-3,3e-3]", "--grid", "train.micro_batch=[4,8]",
                        "--max-concurrent", "4")
    sweep_id = sweep["sweep_id"]
    user_dir = Path(sweep["folder"]).parent
    killed = f"{sweep_id}_{KILLED}"
    wait_until(f"trial {killed} to pass step 50", lambda: _steps(user_dir / killed) >= 50, 600)
    _kill_a_rank(killed)
    wait_until(f"trial {killed} to fail", lambda: _rows(hpcai, sweep_id)[KILLED]["state"] == "FAILED", 120)
    sweep["failed_rows"] = _rows(hpcai, sweep_id)
    subprocess.run(["scontrol", "requeue", killed], check=True)
    release_requeued(killed)
    wait_until("the sweep to end", lambda: all(r["state"] not in {"PENDING", "RUNNING", "REQUEUED", "COMPLETING"}
                                               for r in _rows(hpcai, sweep_id)), 900)
    # sacct may still lack the last trial's energy summary for a moment after it ends
    wait_until("every trial's energy", lambda: all(r["kwh"] for r in _rows(hpcai, sweep_id)), 120)
    sweep["rows"] = _rows(hpcai, sweep_id)
    sweep["user_dir"] = user_dir
    return sweep


def test_one_array_one_task_and_job_directory_per_trial(sweep: dict[str, Any]) -> None:
    sweep_id = sweep["sweep_id"]
    assert sweep["array"] == "0-3%4" and sweep["jobs"] == [f"{sweep_id}_{i}" for i in range(4)]
    out = subprocess.run(["sacct", "-j", sweep_id, "-X", "-n", "-P", "-o", "jobid,jobname"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert sorted(out) == sorted(f"{j}|sweep-test" for j in sweep["jobs"])  # one array, four tasks
    for i, job in enumerate(sweep["jobs"]):
        folder = sweep["user_dir"] / job
        config = json.loads((folder / "config.json").read_text())
        assert config["optimizer"]["lr"] == [1e-3, 1e-3, 3e-3, 3e-3][i]
        assert config["train"]["micro_batch"] == [4, 8, 4, 8][i]
        assert json.loads((folder / "trial.json").read_text())["index"] == i
        assert (folder / f"{job}_0_log.out").exists() and (folder / "checkpoints" / "latest").exists()


def test_every_trial_has_its_row_and_the_best_is_marked(sweep: dict[str, Any], hpcai: RunHpcai) -> None:
    rows = sweep["rows"]
    assert [r["trial"] for r in rows] == [0, 1, 2, 3] and all(r["state"] == "COMPLETED" for r in rows)
    assert [r["overrides"] for r in rows] == [{"optimizer.lr": lr, "train.micro_batch": mb}
                                             for lr in (1e-3, 3e-3) for mb in (4, 8)]
    for r in rows:
        assert r["step"] == 150 and r["final_val_loss"] is not None and r["best_val_loss"] <= r["final_val_loss"]
        assert r["tokens_per_s"] > 0 and r["gpu_hours"] > 0 and r["kwh"] > 0
        assert r["loss_drop_per_kwh"] > 0
    best = [r for r in rows if r["best"]]
    assert len(best) == 1 and best[0]["best_val_loss"] == min(r["best_val_loss"] for r in rows)
    table = hpcai("sweep", "show", sweep["sweep_id"])
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 6 and sum(line.startswith("*") for line in lines) == 1  # title, header, 4 trials
    csv = hpcai("sweep", "show", sweep["sweep_id"], "--csv").stdout.splitlines()
    assert len(csv) == 5 and csv[0].startswith("trial,job_id,state")


def test_a_killed_trial_shows_failed_then_finishes_after_requeue(sweep: dict[str, Any]) -> None:
    failed = sweep["failed_rows"][KILLED]
    assert failed["state"] == "FAILED" and not failed["best"]
    row = sweep["rows"][KILLED]
    assert row["state"] == "COMPLETED" and row["step"] == 150
    metrics = (sweep["user_dir"] / row["job_id"] / "metrics.jsonl").read_text().splitlines()
    starts = [json.loads(line) for line in metrics if '"start"' in line]
    assert len(starts) == 2 and 40 <= starts[1]["step"] < 150  # resumed from a checkpoint, not from scratch


def test_a_refused_sweep_leaves_nothing(hpcai: RunHpcai, tmp_path: Path) -> None:
    from hpc_aidc.site_profile import load_site

    config = tmp_path / "base.toml"
    config.write_text(BASE)
    config.chmod(0o644)
    for folder in (tmp_path, *tmp_path.parents[:-2]):  # bob reads the config (/tmp and / let him already)
        folder.chmod(folder.stat().st_mode & 0o7777 | 0o005)
    user_dir = load_site().job_root / "bob"
    before = set(os.listdir(user_dir)) if user_dir.exists() else set()
    proc = hpcai("submit", "sweep", "--config", str(config), "-A", "physics", "--nodes", "2",
                 "--grid", "optimizer.lr=[1e-3]", user="bob")  # bob is in climate, not physics
    # the plan's note (as `submit train` prints it), then the refusal in one line
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    # sbatch refused it for its account: the error says which accounts bob may use
    assert last.startswith("hpcai: error: Expected an account that user bob is associated with (climate)"), last
    assert set(os.listdir(user_dir)) == before  # no sweep directory, no index


def test_dry_run_prints_the_array_script_and_writes_nothing(hpcai: RunHpcai, tmp_path: Path) -> None:
    config = tmp_path / "base.toml"
    config.write_text(BASE)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    proc = hpcai("submit", "sweep", "--config", str(config), "-A", "physics", "--nodes", "2", "--dry-run",
                 "--grid", "optimizer.lr=[1e-3,3e-3]", "--grid", "train.micro_batch=[4,8]", "--max-concurrent", "2",
                 env={"HPCAI_JOB_ROOT": str(jobs)})
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --requeue" in script
    assert "--kill-on-bad-exit=1" in script and "-m hpc_aidc.node.sweep_trial" in script
    assert f'mkdir -p -- {jobs}/root/"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"' in script
    assert "sbatch --test-only: Job" in proc.stderr  # slurmctld would take it
    assert list(jobs.iterdir()) == []
