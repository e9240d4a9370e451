"""Waiting for one job to finish, polling accounting gently (backoff up to 10 s)."""

from __future__ import annotations

import time
from collections.abc import Callable

from hpc_aidc.errors import JobNotFoundError
from hpc_aidc.scheduler.accounting import job_record
from hpc_aidc.scheduler.parse import AccountingRecord


def wait_for_job(job_id: str, *, timeout_s: float | None = None,
                 on_poll: Callable[[AccountingRecord | None], None] | None = None) -> AccountingRecord:
    delay = 0.5
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            record: AccountingRecord | None = job_record(job_id)
        except JobNotFoundError:
            record = None  # slurmdbd learns of a new job a moment after sbatch returns
        if on_poll:
            on_poll(record)
        if record is not None and record.finished and record.complete:
            return record
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 10.0)
