"""Under slurmctld's per-user RPC rate limit (`SlurmctldParameters=rl_enable`, Slurm 23.02 and later; the dev
cluster turns it on there with a bucket of 30 RPCs refilled at 2 a second): a user who floods the controller
is told to back off, and hpcai's commands still answer for that user meanwhile (Slurm's clients back off
and ask again); a user waiting on a job with `hpcai wait` never trips the limit (the waiting budget of
scheduler/poll: at most 4 RPCs a minute).

Skipped on Slurm before 23.02 (22.05, the host's: no rate limit to turn on)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_kit import slurm_config
from conftest import RunHpcai

pytestmark = pytest.mark.cluster

CTLD_LOG = Path("/var/lib/hpcai-devcluster/log/slurmctld.log")


@pytest.fixture(scope="module")
def bob_uid(cluster: None) -> str:
    config = slurm_config()
    major, minor = (int(x) for x in config["slurm_version"].split(".")[:2])
    if (major, minor) < (23, 2):
        pytest.skip(f"Slurm {config['slurm_version']} has no RPC rate limit (23.02 and later)")
    assert "rl_enable" in config.get("slurmctldparameters", ""), (
        "the dev cluster turns on rl_enable from 23.02 (up.sh version_settings)", config.get("slurmctldparameters"))
    return subprocess.run(["id", "-u", "bob"], capture_output=True, text=True, check=True).stdout.strip()


def _limited(uid: str) -> int:
    """How many times slurmctld has told `uid` to back off so far."""
    text = CTLD_LOG.read_text(errors="replace")
    return text.count(f"RPC rate limit exceeded by uid {uid} ")


@pytest.fixture()
def flood(bob_uid: str) -> Iterator[None]:
    """Bob's queries, 6 at a time, until the test ends: well past his 30-RPC bucket."""
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            subprocess.run(["runuser", "-u", "bob", "--", "squeue", "-h"], capture_output=True, check=False,
                           cwd="/tmp", timeout=120)

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join(timeout=150)


def test_a_flooding_user_is_told_to_back_off_and_hpcai_still_answers(bob_uid: str, flood: None,
                                                                     hpcai: RunHpcai) -> None:
    before = _limited(bob_uid)
    listed = hpcai("jobs", "--json", user="bob", timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list | dict)
    assert _limited(bob_uid) > before, "bob's flood was never rate limited: is rl_enable on?"


def test_waiting_on_a_job_never_trips_the_limit(bob_uid: str, hpcai: RunHpcai) -> None:
    job = subprocess.run(["runuser", "-u", "bob", "--", "sbatch", "--parsable", "-A", "climate", "-t", "2",
                          "-o", "/dev/null", "--wrap", "sleep 15"], capture_output=True, text=True, check=True,
                         cwd="/tmp").stdout.strip().split(";")[0]
    before = _limited(bob_uid)
    waited = hpcai("wait", job, user="bob", timeout=180)
    assert waited.returncode == 0, waited.stderr
    assert _limited(bob_uid) == before
