"""Batched accounting queries: one sacct call answers for many jobs (never a call per job)."""

from __future__ import annotations

from collections.abc import Sequence

from hpc_aidc.errors import JobNotFoundError, SpecError
from hpc_aidc.scheduler.parse import (
    SACCT_DELIMITER,
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    AccountingRecord,
    parse_sacct,
    parse_scontrol_job,
    parse_squeue,
)
from hpc_aidc.scheduler.slurm_cli import run_slurm


def sacct_argv(*, job_ids: Sequence[str] = (), user: str | None = None, all_users: bool = False,
               accounts: Sequence[str] = (), since: str | None = None, until: str | None = None,
               allocations_only: bool = True) -> list[str]:
    argv = ["sacct", "--noheader", "--parsable2", f"--delimiter={SACCT_DELIMITER}",
            f"--format={','.join(SACCT_FIELDS)}"]
    if allocations_only:
        argv.append("--allocations")
    if job_ids:
        argv.append(f"--jobs={','.join(job_ids)}")
    if all_users:
        argv.append("--allusers")
    elif user:
        argv.append(f"--user={user}")
    if accounts:
        argv.append(f"--accounts={','.join(accounts)}")
    if since:
        argv.append(f"--starttime={since}")
    if until:
        argv.append(f"--endtime={until}")
    return argv


def query_jobs(**kwargs: object) -> list[AccountingRecord]:
    return parse_sacct(run_slurm(sacct_argv(**kwargs)).stdout)  # type: ignore[arg-type]


def squeue_argv(*, user: str | None = None, all_users: bool = False, accounts: Sequence[str] = ()) -> list[str]:
    argv = ["squeue", "--noheader", f"--format={SQUEUE_FORMAT}"]
    if all_users:
        argv.append("--all")
    elif user:
        argv.append(f"--user={user}")
    if accounts:
        argv.append(f"--account={','.join(accounts)}")
    return argv


def list_jobs(*, user: str | None, all_users: bool = False, accounts: Sequence[str] = (),
              since: str | None = None) -> list[AccountingRecord]:
    """History from slurmdbd (one sacct call) overlaid with the live queue (one squeue call): a job
    submitted a moment ago is listed even before slurmdbd has recorded it."""
    merged = {r.job_id: r for r in query_jobs(user=user, all_users=all_users, accounts=accounts, since=since)}
    live = parse_squeue(run_slurm(squeue_argv(user=user, all_users=all_users, accounts=accounts)).stdout)
    merged.update({r.job_id: r for r in live})
    return sorted(merged.values(), key=_job_sort_key)


def _job_sort_key(record: AccountingRecord) -> tuple[int, str]:
    base = record.job_id_raw if record.job_id_raw.isdigit() else record.job_id.split("_")[0]
    return (int(base) if base.isdigit() else 0, record.job_id)


def validate_job_id(job_id: str) -> str:
    base = job_id.split("_", 1)
    if not base[0].isdigit() or (len(base) == 2 and not base[1].isdigit()):
        raise SpecError(f"Expected a job id like 123 or 123_4. Got {job_id!r} instead. See `hpcai jobs`.")
    return job_id


def job_record(job_id: str) -> AccountingRecord:
    """The allocation record of one job (an array task as 123_4)."""
    validate_job_id(job_id)
    # -a: a job id names the job whoever owns it; PrivateData decides what we may see.
    records = query_jobs(job_ids=[job_id], all_users=True)
    matches = [r for r in records if r.job_id == job_id or r.job_id_raw == job_id]
    if not matches:
        # slurmdbd learns of a job a moment after sbatch returns; slurmctld knows it at once.
        proc = run_slurm(["scontrol", "show", "job", "-o", job_id], check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return parse_scontrol_job(proc.stdout.strip().splitlines()[0])
        raise JobNotFoundError(
            f"Expected a job {job_id} in Slurm's accounting. Got none. Check the id with `hpcai jobs`."
        )
    return matches[-1]
