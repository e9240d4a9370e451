"""slurmdbd away (routine maintenance): `hpcai jobs` and `hpcai status` fall back to what slurmctld knows
(squeue/scontrol) and say so in one line on stderr; commands that need accounting say so in one line.
Unit tests on recorded output, then the real thing: slurmdbd is stopped on the dev cluster and always
started again (in a finally block) before the test ends."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RECORDED, RunHpcai, assert_clean_error, wait_until

from hpc_aidc.scheduler.accounting import SLURMDBD_DOWN_NOTE
from hpc_aidc.scheduler.parse import slurmdbd_down_message, slurmdbd_unreachable

SACCT_DOWN = (RECORDED / "sacct_slurmdbd_down.txt").read_text()
SACCTMGR_DOWN = (RECORDED / "sacctmgr_slurmdbd_down.txt").read_text()
PIDFILE = Path("/run/hpcai-devcluster/slurmdbd.pid")


def test_detects_slurmdbd_down_on_recorded_output() -> None:
    assert slurmdbd_unreachable(SACCT_DOWN) and slurmdbd_unreachable(SACCTMGR_DOWN)
    for other in ("sacct: error: Invalid time specification (pos=0): last tuesday",
                  "sacct: error: Unknown arguments: --bogus", "", "slurm_load_jobs error: Invalid job id specified"):
        assert not slurmdbd_unreachable(other), other


def test_slurmdbd_down_message_is_one_line() -> None:
    message = slurmdbd_down_message(SACCTMGR_DOWN, "A usage report")
    assert "\n" not in message and message.startswith("Expected slurmdbd")
    assert "(Connection refused)" in message and "A usage report needs accounting" in message
    assert "(no answer)" in slurmdbd_down_message("", "X")
    assert "\n" not in SLURMDBD_DOWN_NOTE


def _sh(*argv: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    return subprocess.run(full, capture_output=True, text=True, check=check, cwd="/tmp", timeout=120)


def _dbd_alive() -> bool:
    try:
        os.kill(int(PIDFILE.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _dbd_answers() -> bool:
    return _sh("sacctmgr", "-n", "show", "cluster", check=False).returncode == 0


def _state_in_slurmdbd(job: str) -> str:
    return _sh("sacct", "-n", "-X", "-P", "-j", job, "-o", "State", check=False).stdout.strip()


def _ctld_caught_up() -> bool:
    """slurmctld reconnected to slurmdbd and sent what it queued meanwhile (sacct is complete again):
    it takes a few seconds after slurmdbd answers."""
    out = _sh("sdiag", check=False).stdout
    return any(line.split(":")[0].strip() == "DBD Agent queue size" and line.split(":")[1].strip() == "0"
               for line in out.splitlines())


@pytest.fixture()
def running_job(cluster: None) -> Iterator[str]:
    job = _sh("sbatch", "--parsable", "-A", "physics", "-t", "5", "-o", "/dev/null", "-J", "dbd-away",
              "--wrap", "sleep 300", user="alice").stdout.strip().split(";")[0]
    try:
        wait_until("the job running",
                   lambda: _sh("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING", 120)
        yield job
    finally:
        _sh("scancel", job, check=False)


@pytest.fixture()
def slurmdbd_stopped(running_job: str) -> Iterator[str]:
    pid = int(PIDFILE.read_text().strip())
    os.kill(pid, 15)
    try:
        wait_until("slurmdbd to stop", lambda: not _dbd_alive(), 30)
        yield running_job
    finally:
        if not _dbd_alive():
            _sh("/usr/sbin/slurmdbd")
        wait_until("slurmdbd to answer again", _dbd_answers, 60)
        # leave the cluster healthy for whoever comes next: slurmctld reconnected and records flow again
        _sh("scancel", running_job, check=False)
        wait_until("the cancel recorded in slurmdbd",
                   lambda: _state_in_slurmdbd(running_job).startswith("CANCELLED"), 90)
        wait_until("slurmctld to send slurmdbd what it queued", _ctld_caught_up, 90)


@pytest.mark.cluster
def test_jobs_and_status_fall_back_to_slurmctld(slurmdbd_stopped: str, hpcai: RunHpcai) -> None:
    job = slurmdbd_stopped
    assert slurmdbd_unreachable(_sh("sacct", "-X", "-n", user="alice", check=False).stderr)

    listed = hpcai("jobs", "--json", user="alice")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == SLURMDBD_DOWN_NOTE + "\n"
    mine = {j["job_id"]: j for j in json.loads(listed.stdout)}
    assert mine[job]["state"] == "RUNNING" and mine[job]["user"] == "alice"
    table = hpcai("jobs", user="alice")
    assert table.returncode == 0 and "dbd-away" in table.stdout and table.stderr == SLURMDBD_DOWN_NOTE + "\n"

    status = hpcai("status", job, user="alice")
    assert status.returncode == 0, status.stderr
    assert status.stderr == SLURMDBD_DOWN_NOTE + "\n"
    assert "RUNNING" in status.stdout and "alice" in status.stdout
    as_json = hpcai("status", job, "--json", user="alice")
    assert json.loads(as_json.stdout)["state"] == "RUNNING"

    # what slurmctld does not know (long ended, or not yours under PrivateData) is a clean error
    assert_clean_error(hpcai("status", "999999", user="alice"), "slurmdbd is not reachable")
    assert_clean_error(hpcai("status", job, user="bob"), "slurmdbd is not reachable")
    # a report cannot do without accounting: one line saying so
    assert_clean_error(hpcai("report", "usage", user="alice"), "Expected slurmdbd", "Connection refused")
    assert_clean_error(hpcai("report", "usage"), "Expected slurmdbd")
