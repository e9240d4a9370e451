"""The one polling policy (scheduler.poll), on a simulated clock; `hpcai wait` and a follower on the real dev
cluster, counted with sdiag and `sacctmgr show stats` (RPCs by user)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence

import pytest
from conftest import HPCAI, RunHpcai

from hpc_aidc.errors import SlurmError
from hpc_aidc.scheduler.poll import FIRST_S, MAX_BACKOFF_S, STEADY_S, JobWatch, next_delay
from hpc_aidc.slurm_client import busy, is_query, retry_delay


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_soon_after_submission_then_every_15_s() -> None:
    assert [next_delay(n, 0) for n in range(1, 6)] == [4.0, 8.0, STEADY_S, STEADY_S, STEADY_S]
    assert FIRST_S == 2.0


def test_errors_back_off_with_jitter_up_to_two_minutes() -> None:
    low = [next_delay(5, e, rng=lambda: 0.0) for e in range(1, 6)]
    high = [next_delay(5, e, rng=lambda: 1.0) for e in range(1, 6)]
    assert low == pytest.approx([12.0, 24.0, 48.0, 96.0, 96.0])
    assert high == pytest.approx([18.0, 36.0, 72.0, 144.0, 144.0])
    assert max(high) <= MAX_BACKOFF_S * 1.2 + 1e-9


def test_a_follower_asks_slurm_4_times_a_minute_at_steady_state() -> None:
    clock = Clock()
    asked: list[float] = []

    def ask(ids: Sequence[str]) -> dict[str, str]:
        asked.append(clock.now)
        return dict.fromkeys(ids, "RUNNING")

    watch = JobWatch(("7",), clock=clock, ask=ask)
    while clock.now < 600:  # a follower's loop: every half second
        watch.poll()
        clock.now += 0.5
    steady = [t for t in asked if t >= 60]
    assert len(steady) <= 4 * 9 + 1 and len(asked) <= 4 * 10 + 4
    assert asked[:3] == [2.0, 6.0, 14.0]  # soon after submission


def test_the_files_saying_the_job_ended_ask_at_once_and_errors_slow_down() -> None:
    clock = Clock()
    answers: list[dict[str, str] | SlurmError] = [{"7": "RUNNING"}, SlurmError("socket timed out"),
                                                   SlurmError("socket timed out"), {"7": "COMPLETED"}]
    calls: list[float] = []

    def ask(ids: Sequence[str]) -> dict[str, str]:
        calls.append(clock.now)
        answer = answers.pop(0)
        if isinstance(answer, SlurmError):
            raise answer
        return answer

    watch = JobWatch(("7",), clock=clock, ask=ask)
    clock.now = 2.0
    watch.poll()
    clock.now = 3.0
    watch.check_soon()  # e.g. submitit's result file appeared
    watch.poll()
    assert calls == [2.0, 3.0] and watch.errors == 1 and not watch.done
    assert watch.wait_s() >= 12.0  # backed off, not every half second
    clock.now += watch.wait_s()
    watch.poll()
    assert watch.errors == 2 and watch.wait_s() >= 24.0
    clock.now += watch.wait_s()
    watch.poll()
    assert watch.done and watch.errors == 0


def test_only_queries_are_asked_again_when_slurm_is_busy() -> None:
    assert is_query(["squeue", "-j", "1"]) and is_query(["sacctmgr", "-n", "show", "assoc"])
    assert is_query(["scontrol", "show", "config"])
    assert not is_query(["sbatch", "x.sh"]) and not is_query(["scontrol", "requeue", "1"])
    assert not is_query(["scancel", "1"])
    timed_out = subprocess.CompletedProcess(["squeue"], 1, "", "squeue: error: Socket timed out on send/recv "
                                                             "operation\n")
    refused = subprocess.CompletedProcess(["squeue"], 1, "", "squeue: error: Invalid job id specified\n")
    assert busy(timed_out) and not busy(refused)
    assert [retry_delay(a, rng=lambda: 0.5) for a in range(3)] == pytest.approx([1.0, 2.0, 4.0])


# -- on the dev cluster ------------------------------------------------------------------------------------

def _rpcs(user: str) -> tuple[int, int]:
    """(slurmctld RPCs, slurmdbd RPCs) of `user` so far: sdiag and `sacctmgr show stats`."""
    pattern = re.compile(rf"^\s*{user}\s+\(\s*\d+\)\s+count:(\d+)", re.MULTILINE)

    def count(argv: list[str]) -> int:
        text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        text = text.split("by user", 1)[1] if "by user" in text else ""
        m = pattern.search(text)
        return int(m.group(1)) if m else 0

    return count(["sdiag"]), count(["sacctmgr", "show", "stats"])


def _sbatch_as(user: str, *args: str) -> str:
    proc = subprocess.run(["runuser", "-u", user, "--", "sbatch", "--parsable", "-o", "/dev/null", *args],
                          capture_output=True, text=True, cwd="/tmp", check=True)
    return proc.stdout.strip().split(";")[0]


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_hpcai_wait_says_how_each_job_ended(hpcai: RunHpcai) -> None:
    good = _sbatch_as("alice", "-A", "physics", "-p", "debug", "-t", "1", "--wrap", "true")
    bad = _sbatch_as("alice", "-A", "physics", "-p", "debug", "-t", "1", "--wrap", "false")
    proc = hpcai("wait", good, bad, "--json", user="alice")
    assert proc.returncode == 1, proc.stderr
    assert {r["job_id"]: r["state"] for r in json.loads(proc.stdout)} == {good: "COMPLETED", bad: "FAILED"}
    assert hpcai("wait", good, user="alice").returncode == 0


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_a_follower_costs_the_controllers_a_few_calls_a_minute(hpcai: RunHpcai) -> None:
    """bob follows his running job: at steady state at most 4 RPCs a minute to slurmctld and none to slurmdbd
    (the old follower made 140 a minute; bench/controller_load for the figures)."""
    job = _sbatch_as("bob", "-A", "climate", "-p", "debug", "-t", "3", "--wrap", "sleep 150")
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip() \
            != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(1)
    follower = subprocess.Popen(["runuser", "-u", "bob", "--", *HPCAI, "logs", job, "--follow"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/tmp")
    time.sleep(16)  # start-up (one sacct to find the job) and the checks soon after: 2, 6 and 14 s
    ctld, dbd = _rpcs("bob")
    time.sleep(45)  # steady state: one state call per 15 s, one RPC each (scontrol show job)
    ctld_after, dbd_after = _rpcs("bob")
    follower.terminate()
    follower.wait(10)
    subprocess.run(["scancel", job], check=False)
    assert ctld_after - ctld <= 4, (ctld, ctld_after)
    assert dbd_after - dbd == 0, (dbd, dbd_after)  # slurmdbd only once the job has left the queue
