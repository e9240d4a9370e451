"""Synthetic accounting lines for report tests (built through the same format sacct prints)."""

from __future__ import annotations

import time

from hpc_aidc.monitor.acct import encode
from hpc_aidc.monitor.summary import Totals
from hpc_aidc.report.rows import JobRow, format_row


def at(text: str) -> int:
    """Local 'YYYY-MM-DDTHH:MM[:SS]' -> epoch."""
    return int(time.mktime(time.strptime(text if len(text) == 19 else text + ":00", "%Y-%m-%dT%H:%M:%S")))


def summary(gpu_j: float | None, *, cpu_j: float | None = None, util: float | None = 50.0,
            idle_gpu_s: float | None = 0.0, tokens: float | None = None, gpus: int = 4, simulated: bool = False,
            runs: int = 1) -> str:
    return encode(Totals(nodes=("n1",), gpus=gpus, gpu_j=gpu_j, cpu_j=cpu_j, duration_s=1.0, power_mean_w=None,
                         power_max_w=None, util_mean=util, idle_gpu_s=idle_gpu_s, tokens=tokens, samples=None,
                         source="counter", simulated=simulated, approximate=False, runs=runs))


def job(job_id: str, *, start: str | None, end: str | None, account: str = "physics", user: str = "alice",
        gpus: int = 4, cpus: int = 8, nodes: int = 1, state: str = "COMPLETED", comment: str = "",
        submit: str | None = None, partition: str = "gpu", raw: str | None = None) -> str:
    s = at(start) if start else None
    e = at(end) if end else None
    sub = at(submit) if submit else s
    elapsed = (e - s) if s is not None and e is not None else 0
    return format_row(JobRow(job_id, raw or job_id, "j", user, account, partition, state, cpus, gpus, nodes, elapsed,
                             sub, sub, s, e, comment))
