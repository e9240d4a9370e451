"""Environment records: redaction, diff and the node-side collection (no job, no GPU needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_aidc.formats.environment_record import ENV_FILE
from hpc_aidc.formats.job_env import SUBMIT_CONTEXT_ENV
from hpc_aidc.node.environment import capture_in_task, collect, is_first_task, package_versions
from hpc_aidc.render.environment import (
    REDACTED,
    diff_lines,
    diff_records,
    flatten,
    redact_argv,
    redact_env,
    redact_value,
)
from hpc_aidc.scheduler.submit_context import git_state

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "monitor" / "fake_nvml"))

from fake_scenario import FakeDevice, Scenario, build_library  # noqa: E402


@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "WANDB_API_KEY",
                                  "GOOGLE_APPLICATION_CREDENTIALS", "HTTP_AUTHORIZATION", "my_passwd",
                                  "SSH_PRIVATE", "Api_Key"])
def test_secret_names_are_redacted_whatever_the_value(name: str) -> None:
    assert redact_env({name: "plain", "HOME": "/home/a"}) == {name: REDACTED, "HOME": "/home/a"}


@pytest.mark.parametrize(("value", "expected"), [
    ("https://alice:s3cret@git.example.org/x.git", f"https://alice:{REDACTED}@git.example.org/x.git"),
    ("postgres://u:p%40ss@db:5432/x", f"postgres://u:{REDACTED}@db:5432/x"),
    ("ghp_abcdefghijklmnop1234", REDACTED),
    ("x hf_AbCdEfGhIjKlMn y", f"x {REDACTED} y"),
    ("https://example.org/path", "https://example.org/path"),
    ("/usr/bin:/bin", "/usr/bin:/bin"),
])
def test_credentials_in_values_are_redacted(value: str, expected: str) -> None:
    assert redact_value(value) == expected
    assert redact_env({"SOME_URL": value}) == {"SOME_URL": expected}


def test_redacted_env_never_contains_the_secret() -> None:
    env = {"HF_TOKEN": "tok-1234567890", "PROXY": "http://bob:hunter2@proxy:3128", "PATH": "/bin"}
    text = json.dumps(redact_env(env))
    assert "tok-1234567890" not in text and "hunter2" not in text and "/bin" in text


def test_argv_secret_flags_are_redacted() -> None:
    argv = ["hpcai", "submit", "run", "--", "python", "x.py", "--token", "abc", "--api-key=def", "--lr", "3e-4",
            "https://u:pw@h/r"]
    out = redact_argv(argv)
    assert out == ["hpcai", "submit", "run", "--", "python", "x.py", "--token", REDACTED, f"--api-key={REDACTED}",
                   "--lr", "3e-4", f"https://u:{REDACTED}@h/r"]


def test_flatten_nested() -> None:
    assert flatten({"a": {"b": 1, "c": [1, {"d": 2}]}, "e": [], "f": {}, "g": ["x", "y"]}) == {
        "a.b": 1, "a.c.0": 1, "a.c.1.d": 2, "e": [], "f": {}, "g": ["x", "y"]}


def _record(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema": "hpcai-environment-v1", "job_id": "1", "captured_at": "t1", "host": "n1",
        "packages": {"torch": "2.13.0", "zarr": "3.1.6"}, "runtime": {"cuda": "12.4", "nccl": "2.21.5",
                                                                       "driver": "550.54"},
        "git": {"commit": "aaa", "dirty": False}, "nodes": ["n1", "n2"],
        "gpus": [{"index": 0, "name": "H100", "uuid": "GPU-1"}], "config": {"optimizer": {"lr": 0.001}},
        "environment": {"SLURM_JOB_ID": "1"},
    }
    base.update(overrides)
    return base


def test_diff_shows_what_changed_and_ignores_variables_and_capture_facts() -> None:
    a = _record()
    b = _record(job_id="2", captured_at="t2", host="n3", environment={"SLURM_JOB_ID": "2"},
                packages={"torch": "2.13.0", "zarr": "3.2.0", "numpy": "2.4.6"},
                runtime={"cuda": "12.4", "nccl": "2.23.4", "driver": "550.54"},
                git={"commit": "bbb", "dirty": True}, nodes=["n3", "n4"],
                gpus=[{"index": 0, "name": "H100", "uuid": "GPU-9"}], config={"optimizer": {"lr": 0.003}})
    changes = {c["key"]: (c["a"], c["b"]) for c in diff_records(a, b)}
    assert changes == {
        "packages.zarr": ("3.1.6", "3.2.0"), "packages.numpy": (None, "2.4.6"),
        "runtime.nccl": ("2.21.5", "2.23.4"), "git.commit": ("aaa", "bbb"), "git.dirty": (False, True),
        "nodes": (["n1", "n2"], ["n3", "n4"]), "gpus.0.uuid": ("GPU-1", "GPU-9"),
        "config.optimizer.lr": (0.001, 0.003),
    }
    lines = diff_lines(diff_records(a, b), "1", "2")
    assert any(line.split() == ["packages.numpy", "(absent)", "->", "2.4.6"] for line in lines)
    assert any(line.split() == ["nodes", "n1", "n2", "->", "n3", "n4"] for line in lines)


def test_identical_records_have_no_diff() -> None:
    assert diff_records(_record(), _record(job_id="9", host="x")) == []
    assert diff_lines([], "1", "9") == ["No differences between jobs 1 and 9 (variables not compared)."]


def test_git_state_of_a_checkout_and_of_no_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (repo / "untracked.log").write_text("not code")
    assert git_state(repo) == {"commit": head, "dirty": False, "root": str(repo)}
    (repo / "a.py").write_text("x = 2\n")
    assert git_state(repo)["dirty"] is True
    outside = tmp_path / "plain"
    outside.mkdir()
    state = git_state(outside)
    assert state["commit"] is None and "not a git repository" in state["reason"]


def test_git_missing_is_null_with_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on this PATH
    assert git_state(tmp_path) == {"commit": None, "dirty": None, "root": None, "reason": "git is not installed"}


def test_versions_come_from_the_path_the_job_sees(tmp_path: Path) -> None:
    fake = tmp_path / "zarr-0.0.1.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: zarr\nVersion: 0.0.1\n")
    code = "import json; from hpc_aidc.node.environment import package_versions; print(json.dumps(package_versions()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tmp_path)}).stdout
    assert json.loads(out)["zarr"] == "0.0.1"
    assert package_versions({"no-such-dist-hpcai": "x"}) == {"no-such-dist-hpcai": None}


def test_only_task_zero_writes() -> None:
    assert is_first_task({}) and is_first_task({"SLURM_PROCID": "0", "SLURM_NODEID": "0"})
    assert not is_first_task({"SLURM_PROCID": "1", "SLURM_NODEID": "0"})
    assert not is_first_task({"SLURM_PROCID": "0", "SLURM_NODEID": "1"})


def test_capture_writes_gpus_from_nvml_and_no_secret(tmp_path: Path) -> None:
    lib = build_library(HERE.parent / "monitor" / "fake_nvml" / "fake_nvml.c", tmp_path / "lib")
    scenario = Scenario([FakeDevice(power=((0.0, 100.0),), name="NVIDIA H100 80GB HBM3", uuid=f"GPU-fake-{i}")
                         for i in range(4)])
    path = scenario.write(tmp_path / "scenario")
    context = {"cwd": "/home/a/proj", "command": ["hpcai", "submit", "run"], "git": {"commit": "c0ffee", "dirty": True}}
    env = {"HPCAI_NVML_LIBRARY": str(lib), "HPCAI_FAKE_NVML_SCENARIO": str(path), "CUDA_VISIBLE_DEVICES": "1,3",
           "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "77", "SLURM_PROCID": "0", "SLURM_NODEID": "0",
           "HF_TOKEN": "hf_secretsecret123", SUBMIT_CONTEXT_ENV: json.dumps(context)}
    job = tmp_path / "job"
    job.mkdir()
    # In a subprocess with this environment: pynvml keeps its first library loaded for the life of the
    # process, and the fake reads its scenario from the real environment.
    code = "import sys; from pathlib import Path; from hpc_aidc.node.environment import capture_in_task; " \
           "capture_in_task({'lr': 1}, Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(job)], check=True, env=env)
    text = (job / ENV_FILE).read_text()
    assert "hf_secretsecret123" not in text
    record = json.loads(text)
    assert [(g["name"], g["uuid"]) for g in record["gpus"]] == [("NVIDIA H100 80GB HBM3", "GPU-fake-1"),
                                                                ("NVIDIA H100 80GB HBM3", "GPU-fake-3")]
    assert record["runtime"]["driver"] and record["runtime"]["simulated"] is True
    assert record["nodes"] == ["n1", "n2"] and record["job_id"] == "77"
    assert record["git"] == {"commit": "c0ffee", "dirty": True}
    assert record["submit"] == {"cwd": "/home/a/proj", "command": ["hpcai", "submit", "run"]}
    assert record["config"] == {"lr": 1}
    assert SUBMIT_CONTEXT_ENV not in record["environment"]
    assert record["environment"]["HF_TOKEN"] == REDACTED


def test_capture_problem_never_fails_the_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture_in_task({}, tmp_path / "no" / "such", {"SLURM_PROCID": "0"})
    assert "environment capture failed" in capsys.readouterr().err


def test_collect_without_gpu_says_why() -> None:
    record = collect({"HPCAI_NVML_LIBRARY": "/nonexistent/libnvidia-ml.so.1"}, None, "1")
    assert record["runtime"]["driver"] is None and "/nonexistent" in record["runtime"]["driver_reason"]
    assert record["gpus"] == []
    assert record["git"]["commit"] is None and "no submit context" in record["git"]["reason"]
