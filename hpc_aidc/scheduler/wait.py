"""Waiting for jobs to end, by the one polling policy (scheduler.poll): Slurm asked at most once per 15 s at
steady state, sooner when the job's own files say it ended."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from hpc_aidc.errors import JobNotFoundError
from hpc_aidc.scheduler.accounting import job_record
from hpc_aidc.scheduler.parse import AccountingRecord
from hpc_aidc.scheduler.poll import JobWatch

# How often a waiter looks at the job's files for an end (local reads: free for the controller).
FILE_LOOK_S = 1.0


def wait_for_jobs(job_ids: Sequence[str], *, timeout_s: float | None = None,
                  ended_hint: Callable[[], bool] | None = None,
                  on_poll: Callable[[dict[str, str]], None] | None = None) -> dict[str, str]:
    """Until every job has ended; their final states. `ended_hint`: the jobs' files say they ended (then
    Slurm is asked at once)."""
    watch = JobWatch(tuple(job_ids))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        if ended_hint is not None and ended_hint():
            watch.check_soon()
        before = watch.calls
        states = watch.poll()
        if on_poll is not None and watch.calls != before:
            on_poll(states)
        if watch.done:
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job(s) {', '.join(job_ids)} did not end within {timeout_s:g} s")
        time.sleep(min(watch.wait_s(), FILE_LOOK_S) if ended_hint else max(watch.wait_s(), 0.05))


def wait_for_job(job_id: str, *, timeout_s: float | None = None,
                 ended_hint: Callable[[], bool] | None = None) -> AccountingRecord:
    """Until the job has ended; then its accounting record (one sacct call: slurmdbd may need a moment to
    hold the whole record, so a few more, spaced out)."""
    wait_for_jobs([job_id], timeout_s=timeout_s, ended_hint=ended_hint)
    delay = 1.0
    for _ in range(6):
        try:
            record = job_record(job_id)
        except JobNotFoundError:
            record = None
        if record is not None and record.finished and record.complete:
            return record
        time.sleep(delay)
        delay = min(delay * 2, 15.0)
    return job_record(job_id)
