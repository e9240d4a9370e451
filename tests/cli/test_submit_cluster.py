"""`hpcai submit run` and the job commands against the real dev cluster (no mocks)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from cluster_kit import json_output, submit_json
from conftest import RunHpcai, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]

REPORT = 'echo "node=$SLURMD_NODENAME rank=$SLURM_PROCID gpus=$CUDA_VISIBLE_DEVICES argv=[$*]"'


def _sacct(job_id: str, fields: str) -> str:
    """The job's sacct line, once slurmdbd has the final record (it arrives a moment after the job ends)."""
    seen: list[str] = []

    def final() -> bool:
        seen.append(subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields], capture_output=True,
                                   text=True, check=True).stdout.strip())
        return bool(seen[-1]) and "allocation" not in seen[-1]

    wait_until(f"sacct's final record of job {job_id}", final, 10, detail=lambda: seen[-1])
    return seen[-1]


def test_two_node_job_completes_and_sacct_has_it(hpcai: RunHpcai) -> None:
    result = submit_json(hpcai, "run", "--nodes", "2", "--gpus-per-node", "2", "--account", "physics",
                         "--job-name", "two-node", "--wait", "--", "bash", "-c", REPORT, "argv0", "a b", "c")
    assert result["state"] == "COMPLETED" and result["nodes"] == 2
    job_id = result["job_id"]
    assert _sacct(job_id, "account,nnodes,alloctres,state").split("|") == [
        "physics", "2", "billing=8,cpu=8,gres/gpu=4,node=2", "COMPLETED"]  # 2 CPUs per GPU (site profile)
    # One task per GPU, each bound to its node's GPUs; arguments arrive intact.
    lines = [hpcai("logs", job_id, "--task", str(t)).stdout for t in range(4)]
    ranks = sorted(line.split("node=")[1].split(" argv")[0] for out in lines for line in out.splitlines()
                   if line.startswith("node="))
    assert ranks == ["n1 rank=0 gpus=0,1", "n1 rank=1 gpus=0,1", "n2 rank=2 gpus=0,1", "n2 rank=3 gpus=0,1"]
    assert all("argv=[a b c]" in out for out in lines)
    status = json_output(hpcai("status", job_id, "--json"))
    assert status["account"] == "physics" and status["gpus"] == 4 and status["nodelist"] == "n[1-2]"


def test_dry_run_prints_exactly_what_is_submitted(hpcai: RunHpcai) -> None:
    args = ["submit", "run", "-N", "2", "-A", "physics", "-J", "same", "--", "true"]
    dry = hpcai(*args[:2], "--dry-run", *args[2:])
    assert dry.returncode == 0, dry.stderr
    assert "sbatch --test-only: Job" in dry.stderr and "to start at" in dry.stderr
    assert dry.stdout.startswith("#!/bin/bash\n")
    submitted = json_output(hpcai(*args[:2], "--json", *args[2:]))  # as the dry run: right after `run`
    assert Path(submitted["script"]).read_text() == dry.stdout


def test_injection_strings_are_never_executed(hpcai: RunHpcai, tmp_path: Path) -> None:
    marker = Path("/tmp") / f"pwned-{uuid.uuid4().hex}"
    evil = [f"x'; touch {marker}; '", f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}"]
    for name in evil[:2]:
        result = submit_json(hpcai, "run", "-N", "2", "-A", "physics", "-J", name, "--wait",
                             "--", "printf", "%s\\n", *evil)
        assert result["state"] == "COMPLETED"
        assert _sacct(result["job_id"], "jobname") == name
        log = hpcai("logs", result["job_id"]).stdout
        for arg in evil:
            assert arg in log.splitlines()
    dry = hpcai("submit", "run", "--dry-run", "--no-test-only", "-J", evil[0], "--", "true")
    assert dry.returncode == 0
    subprocess.run(["bash", "-n"], input=dry.stdout, text=True, check=True)
    assert not marker.exists()


def test_ordinary_user_submits_to_their_project(hpcai: RunHpcai) -> None:
    result = submit_json(hpcai, "run", "-N", "2", "-A", "physics", "--wait", "--", "id", "-un", user="alice")
    assert result["user"] == "alice" and result["state"] == "COMPLETED"
    assert "alice" in hpcai("logs", result["job_id"], user="alice").stdout
    mine = json_output(hpcai("jobs", "--json", user="alice"))
    assert result["job_id"] in {j["job_id"] for j in mine}
    assert {j["user"] for j in mine} == {"alice"}


def test_failed_command_fails_the_job(hpcai: RunHpcai) -> None:
    proc = hpcai("submit", "run", "-A", "physics", "--wait", "--json", "--", "false")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["state"] == "FAILED"


def test_follow_cancel_and_list(hpcai: RunHpcai) -> None:
    job = submit_json(hpcai, "run", "-A", "physics", "--", "bash", "-c",
                      "for i in 1 2 3; do echo tick $i; sleep 1; done")
    follow = hpcai("logs", job["job_id"], "--follow", timeout=120)
    assert [line for line in follow.stdout.splitlines() if line.startswith("tick")] == ["tick 1", "tick 2", "tick 3"]

    sleeper = submit_json(hpcai, "run", "-A", "physics", "--", "sleep", "300")
    listed = json_output(hpcai("jobs", "--json"))
    assert sleeper["job_id"] in {j["job_id"] for j in listed}
    assert hpcai("cancel", sleeper["job_id"]).returncode == 0
    wait_until(f"job {sleeper['job_id']} CANCELLED",
               lambda: json_output(hpcai("status", sleeper["job_id"], "--json"))["state"] == "CANCELLED", 20)
    table = hpcai("jobs").stdout
    assert table.splitlines()[0].split()[:3] == ["JOBID", "NAME", "USER"]


@pytest.mark.parametrize(("prolog", "sidecar"), [("true", False), ("false", True)])
def test_job_starts_its_own_sampler_only_without_the_prolog(hpcai: RunHpcai, tmp_path: Path, prolog: str,
                                                            sidecar: bool) -> None:
    # energy_prolog is an admin-only key (HPCAI_ENERGY_PROLOG changes nothing): a profile says it
    site = tmp_path / "site.toml"
    site.write_text(Path("/etc/hpcai/site.toml").read_text().replace("energy_prolog = true",
                                                                     f"energy_prolog = {prolog}"))
    proc = hpcai("--site", str(site), "submit", "run", "--dry-run", "--", "true",
                 env={"HPCAI_ENERGY_PROLOG": "false" if prolog == "true" else "true"})
    assert proc.returncode == 0, proc.stderr
    assert ("energy sample" in proc.stdout) is sidecar
