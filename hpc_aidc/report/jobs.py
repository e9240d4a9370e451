"""The jobs a project page lists: how many allocations ran in the period and those with the most
energy (pure; from rows here, from the store in store.query.job_stats)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hpc_aidc.report.aggregate import J_PER_KWH, Filters
from hpc_aidc.report.energy import job_energy
from hpc_aidc.report.period import Period
from hpc_aidc.report.rows import JobRow

TOP_JOBS = 10


@dataclass(frozen=True)
class JobEnergyRow:
    job_id: str
    user: str
    name: str
    state: str
    gpus: int
    hours: float
    kwh: float


@dataclass(frozen=True)
class AccountJobs:
    count: int  # allocations that ran in the period
    with_energy: int
    top: tuple[JobEnergyRow, ...]  # most energy first, at most TOP_JOBS


def rank_key(job: JobEnergyRow) -> tuple[float, str, float, str]:
    """Most energy first; the runs of one job (same id and energy) by time, then
    state, so reports from rows and from the store list them alike (store.query._JOBS orders the same)."""
    return -job.kwh, job.job_id, job.hours, job.state


def energy_jobs(rows: Iterable[JobRow]) -> list[JobEnergyRow]:
    """Jobs with a known energy (whole job), most energy first."""
    out = []
    for r in rows:
        e = job_energy(r.admin_comment) if r.admin_comment else None
        if e is None or (e.gpu_j is None and e.cpu_j is None):
            continue
        kwh = ((e.gpu_j or 0.0) + (e.cpu_j or 0.0)) / J_PER_KWH
        out.append(JobEnergyRow(r.job_id, r.user, r.name, r.state, r.gpus, r.elapsed_s / 3600.0, kwh))
    return sorted(out, key=rank_key)


def account_jobs(rows: Iterable[JobRow], period: Period, filters: Filters) -> dict[str, AccountJobs]:
    by_account: dict[str, list[JobRow]] = {}
    for r in rows:
        if ((not filters.accounts or r.account in filters.accounts) and (not filters.users or r.user in filters.users)
                and r.start is not None and r.start < period.end and (r.end is None or r.end >= period.start)):
            by_account.setdefault(r.account, []).append(r)
    out = {}
    for account, mine in by_account.items():
        jobs = energy_jobs(mine)
        out[account] = AccountJobs(len(mine), len(jobs), tuple(jobs[:TOP_JOBS]))
    return out
