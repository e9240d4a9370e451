"""The dev cluster's site policy, both ways: the real slurmctld (JobSubmitPlugins=lua, the job_submit.lua
up.sh renders from /etc/hpcai/site.toml) refuses each request with its documented code and message, and
hpcai refuses the same request first, with the same code, before calling sbatch. `sbatch --test-only`
runs the plugin without creating a job, so the table costs seconds."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import RunHpcai, assert_clean_error

from hpc_aidc.spec.policy import BY_CODE

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]

# (what, sbatch options, hpcai submit run options, code)
TABLE = [
    ("no account", ["-t", "5"], [], "HPCAI-P001"),
    ("GPUs on a CPU partition", ["-A", "physics", "-p", "cpu", "-t", "5", "--gres=gpu:1"],
     ["-A", "physics", "-p", "cpu", "-t", "5", "-G", "1"], "HPCAI-P002"),
    ("too many GPUs for the QoS", ["-A", "physics", "-q", "debug", "-N", "2", "--gres=gpu:h100:4", "-t", "5"],
     ["-A", "physics", "-q", "debug", "-N", "2", "-G", "4"], "HPCAI-P006"),
    ("too many CPUs per GPU", ["-A", "physics", "--gres=gpu:h100:1", "-c", "4", "-t", "5"],
     ["-A", "physics", "-G", "1", "-c", "4"], "HPCAI-P007"),
    ("no time limit", ["-A", "physics", "-p", "cpu"], ["-A", "physics", "-p", "cpu"], "HPCAI-P005"),
    ("an impossible request", ["-A", "physics", "--gres=gpu:h100:8", "-t", "5"], ["-A", "physics", "-G", "8"],
     "HPCAI-P004"),
]
VALID = [
    (["-A", "physics", "-N", "2", "--gres=gpu:h100:2", "-t", "5"], ["-A", "physics", "-N", "2", "-G", "2"]),
    (["-A", "physics", "-p", "cpu", "-c", "4", "-t", "5"], ["-A", "physics", "-p", "cpu", "-c", "4", "-t", "5"]),
]


def _sbatch_test_only(user: str, options: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", "sbatch", "--test-only", "-o", "/dev/null", *options,
                           "--wrap", "true"], capture_output=True, text=True, cwd="/tmp", check=False)


@pytest.mark.parametrize(("what", "sbatch", "submit", "code"), TABLE, ids=[t[0] for t in TABLE])
def test_slurmctld_and_hpcai_refuse_with_the_same_code(hpcai: RunHpcai, tmp_path: Path, what: str,
                                                       sbatch: list[str], submit: list[str], code: str) -> None:
    refused = _sbatch_test_only("alice", sbatch)
    assert refused.returncode != 0, refused.stderr
    line = next(x for x in refused.stderr.splitlines() if code in x)
    # the documented message: the catalogue's template with the request's values filled in
    pattern = re.escape(BY_CODE[code].template)
    pattern = re.sub(r"\\\{[a-z_]+\\\}", ".+", pattern)
    assert re.search(f"sbatch: error: {code}: {pattern}$", line), line

    proc = hpcai("submit", "run", *submit, "--dry-run", "--", "true", user="alice",
                 env={"HPCAI_JOB_ROOT": str(tmp_path)})
    assert_clean_error(proc, f"{code}: Expected")


@pytest.mark.parametrize(("sbatch", "submit"), VALID)
def test_valid_requests_pass_both(hpcai: RunHpcai, sbatch: list[str], submit: list[str]) -> None:
    accepted = _sbatch_test_only("alice", sbatch)
    assert accepted.returncode == 0 and "to start at" in accepted.stderr, accepted.stderr
    proc = hpcai("submit", "run", *submit, "--dry-run", "--", "true", user="alice", env={"HPCAI_JOB_ROOT": "/tmp"})
    assert proc.returncode == 0, proc.stderr
    assert "sbatch --test-only: Job" in proc.stderr


def test_root_is_exempt() -> None:
    proc = subprocess.run(["sbatch", "--test-only", "-o", "/dev/null", "-t", "5", "--wrap", "true"],
                          capture_output=True, text=True, cwd="/tmp", check=False)
    assert proc.returncode == 0, proc.stderr
