"""Environment capture on the real dev cluster: every hpcai job writes environment.json once (task 0),
`hpcai status JOB --env` shows it, `hpcai env diff` shows a package version changed between two jobs,
and secrets in the job's environment never reach the file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cluster_kit import submit_json
from conftest import RunHpcai, assert_clean_error, wait_until

pytestmark = pytest.mark.usefixtures("cluster")

SECRET = "hf_doNotLeakThisToken42"


def _submit(hpcai: RunHpcai, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    return submit_json(hpcai, "run", "-N", "2", "--gpus-per-node", "2", "-A", "physics", "--wait", "--", "true",
                       cwd=cwd, env=env)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_env_diff_shows_a_changed_package_and_secrets_stay_out(hpcai: RunHpcai, tmp_path: Path) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "model.py").write_text("x = 1\n")
    _git(repo, "add", "model.py")
    _git(repo, "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    fake = tmp_path / "shadow" / "zarr-0.0.1.dist-info"  # a "downgraded" zarr, first on the job's sys.path
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: zarr\nVersion: 0.0.1\n")
    secret_env = {"HF_TOKEN": SECRET, "MIRROR_URL": f"https://bob:{SECRET}@mirror.example.org/simple"}

    first = _submit(hpcai, repo, secret_env)
    (repo / "model.py").write_text("x = 2\n")  # the second job runs uncommitted code
    second = _submit(hpcai, repo, {**secret_env, "PYTHONPATH": str(tmp_path / "shadow")})
    assert first["state"] == second["state"] == "COMPLETED"

    for job in (first, second):
        text = (Path(job["folder"]) / "environment.json").read_text()
        assert SECRET not in text
    shown = hpcai("status", second["job_id"], "--env", "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["job_id"] == second["job_id"]
    assert record["environment"]["HF_TOKEN"] == "<redacted>"
    assert record["environment"]["MIRROR_URL"] == "<redacted>"  # not on the allow-list: its name only
    assert record["git"] == {"commit": head, "dirty": True, "root": str(repo)}
    assert record["submit"]["cwd"] == str(repo)
    assert len(record["nodes"]) == 2
    # The dev cluster's simulated NVML: names and UUIDs of the job's 2 GPUs on its first node.
    assert len(record["gpus"]) == 2 and all(g["uuid"].startswith("GPU-") for g in record["gpus"])
    assert record["runtime"]["driver"] and record["config"] == {"command": ["true"]}
    text = hpcai("status", second["job_id"], "--env")
    assert text.returncode == 0 and "HF_TOKEN=<redacted>" in text.stdout and SECRET not in text.stdout

    diff = hpcai("env", "diff", first["job_id"], second["job_id"], "--json")
    assert diff.returncode == 0, diff.stderr
    changes = {c["key"]: (c["a"], c["b"]) for c in json.loads(diff.stdout)["changes"]}
    assert changes["packages.zarr"][1] == "0.0.1" and changes["packages.zarr"][0] != "0.0.1"
    assert changes["git.dirty"] == (False, True)
    assert not any(key.startswith("environment") for key in changes)
    table = hpcai("env", "diff", first["job_id"], second["job_id"])
    assert table.returncode == 0
    assert any(line.split()[:1] == ["packages.zarr"] and line.split()[-1] == "0.0.1"
               for line in table.stdout.splitlines())


def test_env_of_a_job_without_record_is_a_clean_error(hpcai: RunHpcai, tmp_path: Path) -> None:
    # A plain sbatch job (not through hpcai) has no environment.json.
    proc = subprocess.run(["sbatch", "--parsable", "-A", "physics", "--wait", "-o", "/dev/null", "--wrap", "true"],
                          capture_output=True, text=True, check=True)
    job_id = proc.stdout.strip().split(";")[0]
    assert_clean_error(hpcai("status", job_id, "--env"), "environment.json")
    assert_clean_error(hpcai("env", "diff", job_id, job_id, "--json"), "environment.json")
    assert_clean_error(hpcai("env", "diff", "not-a-job", job_id))


def test_each_inference_array_task_records_its_environment(hpcai: RunHpcai, tmp_path: Path) -> None:
    (tmp_path / "upper_entry.py").write_text("def run(texts, task, params):\n    return [t.upper() for t in texts]\n")
    (tmp_path / "lines.txt").write_text("".join(f"line {i}\n" for i in range(4)))
    out = tmp_path / "out"
    submitted = submit_json(hpcai, "infer", "--entry", "upper_entry:run", "--input", str(tmp_path / "lines.txt"),
                            "--output", str(out), "--rows-per-shard", "2", "--tasks", "2", "-A", "physics",
                            "--gpus-per-task", "0", env={"PYTHONPATH": str(tmp_path), "HF_TOKEN": SECRET})
    array = submitted["arrays"][0]["job_id"]
    wait_until("both tasks' environment records", lambda: len(list((out / "environment").glob("*.json"))) >= 2,
               120, interval=1)
    for task in (0, 1):
        shown = hpcai("status", f"{array}_{task}", "--env", "--json")
        assert shown.returncode == 0, shown.stderr
        record = json.loads(shown.stdout)
        assert record["job_id"] == f"{array}_{task}" and record["config"]["output"] == str(out)
        assert record["environment"]["HF_TOKEN"] == "<redacted>"
        assert record["submit"]["command"][:3] == ["hpcai", "submit", "infer"]
        assert record["gpus"] == [] and record["runtime"]["driver"]  # no GPUs asked for: none listed
    assert SECRET not in "".join(p.read_text() for p in (out / "environment").glob("*.json"))
