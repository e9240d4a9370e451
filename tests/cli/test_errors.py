"""Every bad input: one line on stderr, exit 2, no traceback, nothing submitted, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RunHpcai, assert_clean_error

GHOST_SITE = """
[cluster]
job_root = "{root}"
energy_store = "{root}/energy"
scratch = "/tmp"
default_partition = "ghost"
[partitions.ghost]
nodes = 2
gpus_per_node = 0
cpus_per_node = 4
"""


@pytest.fixture()
def job_root(tmp_path: Path) -> Path:
    root = tmp_path / "jobs"
    root.mkdir()
    return root


def _env(job_root: Path) -> dict[str, str]:
    return {"HPCAI_JOB_ROOT": str(job_root)}


@pytest.mark.parametrize(("args", "needle"), [
    (["--partition", "nope"], "Got 'nope'"),
    (["--gpus-per-node", "2", "--gpu-type", "a100"], "--gpu-type h100"),
    (["--nodes", "9"], "at most 4 nodes"),
    (["--gpus-per-node", "5"], "at most 4 GPUs per node"),
    (["--nodes", "0"], "--nodes >= 1"),
    (["--nodes", "-2"], "--nodes >= 1"),
    (["--cpus-per-task", "0"], "--cpus-per-task >= 1"),
    (["--time", "tomorrow"], "time limit as"),
    (["--time", "00:00:00"], "above zero"),
    (["--time", "3-00:00:00"], "limit of 1440 min"),
    (["--job-name", "a\nb"], "without newlines"),
    (["--nodes", "two"], "not a valid integer"),
    (["--frobnicate"], "No such option"),
])
def test_bad_resources(hpcai: RunHpcai, job_root: Path, args: list[str], needle: str) -> None:
    proc = hpcai("submit", "run", *args, "--", "true", env=_env(job_root))
    assert_clean_error(proc, needle)
    assert proc.stdout == ""
    assert list(job_root.iterdir()) == []


def test_missing_command(hpcai: RunHpcai, job_root: Path) -> None:
    assert_clean_error(hpcai("submit", "run", "--nodes", "1", env=_env(job_root)), "command after `--`")


def test_missing_site_profile(hpcai: RunHpcai, tmp_path: Path) -> None:
    proc = hpcai("submit", "run", "--", "true", env={"HPCAI_SITE": str(tmp_path / "none.toml")})
    assert_clean_error(proc, "site profile", "HPCAI_SITE")
    assert_clean_error(hpcai("--site", str(tmp_path / "none.toml"), "site", "show"), "Got no such file")


def test_dry_run_validates_too(hpcai: RunHpcai, job_root: Path) -> None:
    proc = hpcai("submit", "run", "--dry-run", "--nodes", "9", "--", "true", env=_env(job_root))
    assert_clean_error(proc, "at most 4 nodes")


@pytest.mark.parametrize("job_id", ["abc", "12_x", "1;rm"])
def test_bad_job_ids(hpcai: RunHpcai, job_id: str) -> None:
    # status also takes a pipeline name: its message names both
    assert_clean_error(hpcai("status", job_id), "Expected a job id (like 123) or a pipeline name or directory")
    assert_clean_error(hpcai("cancel", job_id), "job id like 123 or 123_4")


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
class TestAgainstTheCluster:
    def test_account_without_association(self, hpcai: RunHpcai, user_folders: Path) -> None:
        proc = hpcai("submit", "run", "-A", "climate", "--", "true", user="alice", env=_env(user_folders))
        assert_clean_error(proc, "associated with (physics)", "'climate'")
        assert [p for p in user_folders.rglob("*") if not p.is_dir()] == []

    def test_job_root_the_user_cannot_reach(self, hpcai: RunHpcai, job_root: Path) -> None:
        # pytest's tmp_path lies under a root-only directory: alice can neither create nor list it
        proc = hpcai("submit", "run", "-A", "physics", "--", "true", user="alice", env=_env(job_root))
        assert_clean_error(proc, "job directory", "job_root")

    def test_dry_run_with_a_foreign_account_prints_no_script(self, hpcai: RunHpcai, job_root: Path) -> None:
        job_root.chmod(0o1777)
        proc = hpcai("submit", "run", "--dry-run", "-A", "climate", "--", "true", user="alice", env=_env(job_root))
        assert_clean_error(proc, "associated with (physics)")

    def test_qos_not_allowed(self, hpcai: RunHpcai, job_root: Path) -> None:
        proc = hpcai("submit", "run", "-A", "physics", "--qos", "gold", "--", "true", env=_env(job_root))
        assert_clean_error(proc, "Expected a QoS allowed")

    def test_unknown_job(self, hpcai: RunHpcai) -> None:
        assert_clean_error(hpcai("status", "999999"), "Expected a job 999999")
        assert_clean_error(hpcai("logs", "999999"), "Expected a job 999999")

    def test_logs_bad_task(self, hpcai: RunHpcai) -> None:
        assert_clean_error(hpcai("logs", "1", "--task", "-1"), "--task >= 0")

    def test_sbatch_refusal_leaves_nothing_behind(self, hpcai: RunHpcai, tmp_path: Path, job_root: Path) -> None:
        site = tmp_path / "site.toml"
        site.write_text(GHOST_SITE.format(root=job_root))
        proc = hpcai("--site", str(site), "submit", "run", "--", "true")
        assert_clean_error(proc, "sbatch refused the job", "partition")
        leftovers = [p for p in job_root.rglob("*") if p.is_file() or p.is_symlink()]
        assert leftovers == []


def test_malformed_yaml_train_config(hpcai: RunHpcai, tmp_path: Path, job_root: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  zero: [1\n")
    proc = hpcai("submit", "train", "--config", str(config), "--dry-run", env=_env(job_root))
    assert_clean_error(proc, "Expected valid YAML", "run.yaml")
    assert list(job_root.iterdir()) == []
