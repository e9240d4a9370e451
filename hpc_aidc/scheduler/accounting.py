"""Batched accounting queries: one sacct call answers for many jobs (never a call per job)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from hpc_aidc.errors import AccessError, JobNotFoundError, SlurmError
from hpc_aidc.ids import parse_job_id
from hpc_aidc.scheduler.fence import Fence, say_quarantined, unfence
from hpc_aidc.scheduler.parse import (
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    AccountingRecord,
    parse_sacct,
    parse_squeue,
    slurmdbd_down_message,
    slurmdbd_unreachable,
)
from hpc_aidc.slurm_client import first_error_line, run_slurm

# Said on stderr (one line) by `hpcai jobs` and `hpcai status` when they fall back to slurmctld.
SLURMDBD_DOWN_NOTE = ("slurmdbd not reachable: showing jobs slurmctld knows (running/pending/recently ended) "
                      "only")


def sacct_argv(fence: Fence, *, job_ids: Sequence[str] = (), user: str | None = None, all_users: bool = False,
               accounts: Sequence[str] = (), states: Sequence[str] = (), since: str | None = None,
               until: str | None = None, allocations_only: bool = True) -> list[str]:
    argv = ["sacct", *fence.sacct_args(SACCT_FIELDS)]
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
    if states:
        argv.append(f"--state={','.join(states)}")
    if since:
        argv.append(f"--starttime={since}")
    if until:
        argv.append(f"--endtime={until}")
    return argv


def _sacct(**kwargs: Any) -> list[AccountingRecord] | None:
    """sacct's rows (fenced: user text cannot shape a row), or None when slurmdbd does not answer
    (maintenance). Any other sacct failure is a SlurmError."""
    fence = Fence.new()
    proc = run_slurm(sacct_argv(fence, **kwargs), check=False)
    if proc.returncode != 0:
        if slurmdbd_unreachable(proc.stderr):
            return None
        raise SlurmError(f"sacct failed: {first_error_line(proc.stderr or proc.stdout)}")
    rows = unfence(proc.stdout, fence, len(SACCT_FIELDS) + 1)
    say_quarantined(rows, "sacct's output")
    return parse_sacct("\n".join(rows.lines))


def query_jobs(**kwargs: Any) -> list[AccountingRecord]:
    """Rows from slurmdbd (sacct_argv's filters); a SlurmError when it does not answer."""
    records = _sacct(**kwargs)
    if records is None:
        raise SlurmError(slurmdbd_down_message("", "This command"))
    return records


def queue_jobs(*, job_ids: Sequence[str] = (), user: str | None = None, all_users: bool = False,
               accounts: Sequence[str] = (), all_states: bool = False, check: bool = True) -> list[AccountingRecord]:
    """slurmctld's jobs (one fenced squeue call); `all_states`: also those that ended within MinJobAge, which
    slurmctld still holds. With check=False a failed squeue is no jobs."""
    fence = Fence.new()
    argv = ["squeue", "--noheader", f"--format={fence.squeue_format(SQUEUE_FIELDS)}"]
    if all_states:
        argv.append("--states=all")
    if job_ids:
        argv.append(f"--jobs={','.join(job_ids)}")
    if all_users:
        argv.append("--all")
    elif user:
        argv.append(f"--user={user}")
    if accounts:
        argv.append(f"--account={','.join(accounts)}")
    proc = run_slurm(argv, check=check)
    if proc.returncode != 0:
        return []
    rows = unfence(proc.stdout, fence, len(SQUEUE_FIELDS) + 1)
    say_quarantined(rows, "squeue's output")
    return parse_squeue("\n".join(rows.lines))


@dataclass(frozen=True)
class JobListing:
    records: list[AccountingRecord]
    live_only: bool = False  # slurmdbd did not answer: only the jobs slurmctld knows (SLURMDBD_DOWN_NOTE)


def list_jobs(*, user: str | None, all_users: bool = False, accounts: Sequence[str] = (),
              since: str | None = None) -> JobListing:
    """History from slurmdbd (one sacct call) overlaid with the live queue (one squeue call): a job
    submitted a moment ago is listed even before slurmdbd has recorded it. While slurmdbd is away,
    slurmctld's jobs alone (squeue of every state it still holds), marked `live_only`."""
    history = _sacct(user=user, all_users=all_users, accounts=accounts, since=since)
    merged = {r.job_id: r for r in history or ()}
    live = queue_jobs(user=user, all_users=all_users, accounts=accounts, all_states=history is None)
    merged.update({r.job_id: r for r in live})
    return JobListing(sorted(merged.values(), key=_job_sort_key), live_only=history is None)


def _job_sort_key(record: AccountingRecord) -> tuple[int, str]:
    base = record.job_id_raw if record.job_id_raw.isdigit() else record.job_id.split("_")[0]
    return (int(base) if base.isdigit() else 0, record.job_id)



@dataclass(frozen=True)
class JobLookup:
    record: AccountingRecord
    live_only: bool = False  # slurmdbd did not answer: slurmctld's record (SLURMDBD_DOWN_NOTE)


def job_record(job_id: str) -> AccountingRecord:
    """The allocation record of one job (an array task as 123_4)."""
    return find_job(job_id).record


def find_job(job_id: str) -> JobLookup:
    """job_record, also saying whether slurmdbd was away and slurmctld answered alone."""
    parse_job_id(job_id)
    # -a: a job id names the job whoever owns it; PrivateData decides what we may see.
    return _match_job(job_id, _sacct(job_ids=[job_id], all_users=True))


def _match_job(job_id: str, records: list[AccountingRecord] | None,
               queue: list[AccountingRecord] | None = None) -> JobLookup:
    """The record of `job_id` among sacct's rows for it (None: slurmdbd away), else among slurmctld's
    (`queue`, when already asked)."""
    matches = [r for r in records or () if r.job_id == job_id or r.job_id_raw == job_id]
    if not matches:
        # slurmdbd learns of a job a moment after sbatch returns, and may be down for maintenance;
        # slurmctld knows a job from submission until MinJobAge after its end.
        if queue is None:
            queue = queue_jobs(job_ids=[job_id], all_users=True, all_states=True, check=False)
        live = [r for r in queue if r.job_id == job_id or r.job_id_raw == job_id]
        if live:
            return JobLookup(live[-1], live_only=records is None)
        if records is None:
            raise JobNotFoundError(
                f"Expected job {job_id} in slurmctld's jobs while slurmdbd is not reachable. Got none (it ended "
                "a while ago, or is not yours). Try again once slurmdbd is back, or check `hpcai jobs`."
            )
        raise JobNotFoundError(
            f"Expected a job {job_id} in Slurm's accounting. Got none (or none you may see). Check the id "
            "with `hpcai jobs`."
        )
    return JobLookup(matches[-1])


@dataclass(frozen=True)
class JobTasks:
    """What a job id names: one job or array task, or (`array`) every task of an array."""

    records: list[AccountingRecord]  # array: one per task in index order; tasks not started as 12_[4-7%2]
    array: bool = False
    live_only: bool = False  # slurmdbd did not answer: slurmctld's records (SLURMDBD_DOWN_NOTE)


def find_job_tasks(job_id: str) -> JobTasks:
    """find_job, but an array's own id (`123`, as `hpcai submit infer` prints it) names all its tasks
    (`123_0`, `123_1`, ...), from the same one sacct call (and one squeue call when slurmdbd has not
    recorded the job yet or is away). An array task (`123_4`; one not started yet from its array's row
    `123_[4-7]`), a plain job, or the raw id of another array's task names that one record."""
    parse_job_id(job_id)
    records = _sacct(job_ids=[job_id], all_users=True)
    if "_" in job_id:
        queue = None
        if not any(r.job_id == job_id for r in records or ()):  # not started: in a row like 12_[3-5%2]?
            waiting = _pending_task(job_id, records or [])
            if waiting is None:
                queue = queue_jobs(job_ids=[job_id], all_users=True, all_states=True, check=False)
                waiting = _pending_task(job_id, queue)
            if waiting is not None:
                return JobTasks([waiting], live_only=records is None)
        lookup = _match_job(job_id, records, queue)
        return JobTasks([lookup.record], live_only=lookup.live_only)
    tasks = _array_tasks(job_id, records or [])
    queue = None
    if not tasks and not any(r.job_id == job_id or r.job_id_raw == job_id for r in records or ()):
        queue = queue_jobs(job_ids=[job_id], all_users=True, all_states=True, check=False)
        tasks = _array_tasks(job_id, queue)
    if tasks:
        return JobTasks(tasks, array=True, live_only=records is None)
    lookup = _match_job(job_id, records, queue)
    return JobTasks([lookup.record], live_only=lookup.live_only)


def _pending_task(job_id: str, rows: list[AccountingRecord]) -> AccountingRecord | None:
    """Array task `job_id` (12_4) from a row of tasks Slurm has not started yet (12_[3-5%2]), as its own."""
    from hpc_aidc.scheduler.infer import array_task

    array, _, index = job_id.partition("_")
    for r in reversed(rows):
        found = array_task(r.job_id) if "[" in r.job_id else None
        if found is not None and found[0] == array and int(index) in found[1]:
            return replace(r, job_id=job_id)
    return None


def _array_tasks(array_id: str, rows: list[AccountingRecord]) -> list[AccountingRecord]:
    """The rows of array `array_id`'s tasks, the latest per task, in task order."""
    tasks = {r.job_id: r for r in rows if r.job_id.startswith(f"{array_id}_")}
    return sorted(tasks.values(), key=_task_order)


def _task_order(record: AccountingRecord) -> tuple[int, str]:
    """12_3 by 3; 12_[4-7%2] (tasks not started) by 4."""
    index = record.job_id.split("_", 1)[1].lstrip("[")
    digits = index[:len(index) - len(index.lstrip("0123456789"))]
    return (int(digits) if digits else 1 << 62, record.job_id)


@dataclass(frozen=True)
class CancelOutcome:
    cancelled: list[str]       # scancel accepted: Slurm is ending them
    already_ended: list[str]   # nothing left to cancel


# scancel exits 0 whatever happened to each id, and says nothing about an id Slurm does not know unless
# asked with --verbose, which gives one line per refused id (tests/recorded/scancel_verbose.txt).
_KILL_ERROR = re.compile(r"Kill job error on job id (\S+): (.+)$")
_UNKNOWN = "Invalid job id specified"
_ENDED = "already completing or completed"
_DENIED = "Access/permission denied"


def parse_scancel_verbose(stderr: str) -> dict[str, str]:
    """Slurm's refusal per job id from `scancel --verbose` (ids it accepted are absent)."""
    refused: dict[str, str] = {}
    for line in stderr.splitlines():
        m = _KILL_ERROR.search(line.strip())
        if m:
            refused[m.group(1)] = m.group(2).strip()
    return refused


def cancel_jobs(job_ids: Sequence[str]) -> CancelOutcome:
    """Cancel jobs (array tasks as 123_4) with one scancel call, and say truthfully what happened to each:
    cancelled, already ended, or refused (an id Slurm does not know, a job of someone else) with one line."""
    # as scancel writes them back (0042 -> 42), so that its verdicts match the ids asked for
    ids = ["_".join(str(int(part)) for part in parse_job_id(j).split("_")) for j in job_ids]
    proc = run_slurm(["scancel", "--verbose", *ids], check=False)
    refused = parse_scancel_verbose(proc.stderr)
    if proc.returncode != 0 and not refused:
        raise SlurmError(f"scancel failed: {first_error_line(proc.stderr or proc.stdout)}")
    cancelled = [j for j in ids if j not in refused]
    ended = [j for j in ids if _ENDED in refused.get(j, "")]
    done = f" (cancelled: {', '.join(cancelled)})" if cancelled else ""
    unknown = [j for j in ids if _UNKNOWN in refused.get(j, "")]
    if unknown:
        raise JobNotFoundError(
            f"Expected a job Slurm knows. Got no job {', '.join(unknown)} (scancel: {_UNKNOWN}) instead{done}. "
            "Check the id with `hpcai jobs`."
        )
    denied = [j for j in ids if _DENIED in refused.get(j, "")]
    if denied:
        raise AccessError(
            f"Expected jobs you may cancel. Got {', '.join(denied)} (scancel: {_DENIED}) instead{done}. Only "
            "a job's owner, a coordinator of its account or an admin may cancel it."
        )
    other = [j for j in ids if j in refused and j not in ended]
    if other:
        raise SlurmError(f"scancel refused job {other[0]}: {refused[other[0]]}{done}.")
    return CancelOutcome(cancelled=cancelled, already_ended=ended)
