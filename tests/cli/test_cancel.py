"""`hpcai cancel` says what Slurm did: an unknown id or a job of someone else is one line and exit 2
(scancel itself exits 0 and prints nothing for an unknown id), an ended job is said to have ended."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from conftest import RECORDED, RunHpcai, assert_clean_error

from hpc_aidc.scheduler.accounting import parse_scancel_verbose


def test_scancel_verbose_refusals_per_id() -> None:
    text = (RECORDED / "scancel_verbose.txt").read_text()
    alice, root = text.split("# as root")
    assert parse_scancel_verbose(alice) == {
        "5": "Access/permission denied", "999999_3": "Invalid job id specified",
        "4": "Access/permission denied", "999999": "Invalid job id specified"}
    assert parse_scancel_verbose(root) == {
        "5": "Job/step already completing or completed", "999999": "Invalid job id specified"}
    assert parse_scancel_verbose("scancel: Terminating job 7\n") == {}


@pytest.mark.parametrize("job_id", ["abc", "12_x", "1;rm", "1.5", "123_", ""])
def test_malformed_ids_are_refused_before_slurm(hpcai: RunHpcai, job_id: str) -> None:
    assert_clean_error(hpcai("cancel", job_id), "Expected a Slurm job id like 123 or 123_4", repr(job_id))


@pytest.fixture()
def held_job() -> Iterator[str]:
    """A job of root's that never runs (held), cancelled at the end whatever the test did."""
    name = f"held-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(["sbatch", "--parsable", "-H", "-A", "physics", "-p", "debug", "-J", name, "-o", "/dev/null",
                          "--wrap", "true"], capture_output=True, text=True, check=True).stdout
    job_id = out.strip().split(";")[0]
    yield job_id
    subprocess.run(["scancel", job_id], check=False)


def _state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], capture_output=True, text=True,
                          check=False).stdout.strip()


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
class TestCancel:
    def test_unknown_job(self, hpcai: RunHpcai) -> None:
        for args in (["999999"], ["999999_3"], ["--json", "999999"]):
            proc = hpcai("cancel", *args)
            assert_clean_error(proc, "Expected a job Slurm knows", f"Got no job {args[-1]} ", "hpcai jobs")
            assert proc.stdout == ""
        if os.getuid() == 0:  # as another user too (the fixture switches users with runuser)
            assert_clean_error(hpcai("cancel", "999999", user="alice"), "Got no job 999999")

    def test_cancel_then_cancel_again(self, hpcai: RunHpcai, held_job: str) -> None:
        proc = hpcai("cancel", held_job)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"Cancelled {held_job}\n"
        assert _state(held_job) == "CANCELLED"
        again = hpcai("cancel", "--json", held_job)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == {"cancelled": [], "already_ended": [held_job]}
        assert hpcai("cancel", held_job).stdout == f"Already ended, nothing to cancel: {held_job}\n"

    def test_a_known_and_an_unknown_id(self, hpcai: RunHpcai, held_job: str) -> None:
        proc = hpcai("cancel", held_job, "999999")
        assert_clean_error(proc, "Got no job 999999", f"(cancelled: {held_job})")
        assert _state(held_job) == "CANCELLED"

    @pytest.mark.skipif(os.getuid() != 0, reason="runs `hpcai` as alice on root's job (runuser needs root)")
    def test_someone_elses_job(self, hpcai: RunHpcai, held_job: str) -> None:
        proc = hpcai("cancel", held_job, user="alice")
        assert_clean_error(proc, "Expected jobs you may cancel", f"Got {held_job} (scancel: Access/permission denied)")
        assert _state(held_job) == "PENDING"
