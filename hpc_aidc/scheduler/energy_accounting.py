"""Job energy summaries into Slurm accounting (AdminComment), and back out of it. The only code that
runs sacct/sacctmgr for energy. Storing never blocks slurmctld for long (each call has a short
timeout) and never loses a summary: what cannot be stored now is spooled and retried by the next
EpilogSlurmctld or by `hpcai energy backfill` (cron)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpc_aidc.errors import HpcAidcError, JobNotFoundError, SlurmError
from hpc_aidc.ids import parse_job_id
from hpc_aidc.monitor import acct, spool
from hpc_aidc.monitor.finish import combine_ended_run, job_totals
from hpc_aidc.slurm_client import first_error_line, run_slurm

SLURM_TIMEOUT_S = 10.0
_TASK_ID = re.compile(r"^\d+_\d+$")
# admincomment last: it is free text and may hold the separator
JOB_FIELDS = ("jobid", "jobidraw", "user", "account", "state", "elapsed", "nnodes", "admincomment")


def records_job_id(job_id: str, raw: str | None) -> str:
    """The id a job's energy records are stored under: Slurm's own id of the allocation (sacct's
    JobIDRaw), the $SLURM_JOB_ID that prolog, epilogs and the batch script see. For an array task it is
    not the display id (task 2_0 may be job 3); `job_id` serves only when accounting gave no raw id."""
    return raw if raw and raw.isdigit() else job_id


def pick_job_row(rows: Sequence[dict[str, str]], job_id: str) -> dict[str, str]:
    """The row `job_id` names among sacct's (`-j 2` lists every task of array 2, and job 2 is one of
    them): the one shown as `job_id`, else the one whose raw id it is, else the last."""
    for key in ("jobid", "jobidraw"):
        found = [r for r in rows if r.get(key) == job_id]
        if found:
            return found[-1]
    return rows[-1]


def job_with_comment(job_id: str, timeout: float = 60.0) -> dict[str, str]:
    """One sacct call: the job's allocation line with its raw id and AdminComment."""
    out = run_slurm(["sacct", "-j", parse_job_id(job_id), "-X", "-n", "-P", "-o", ",".join(JOB_FIELDS)],
                    timeout=timeout, check=False)
    if out.returncode != 0:
        raise SlurmError(f"Expected sacct to answer for job {job_id}. Got: {first_error_line(out.stderr)}. "
                         "Is slurmdbd up?")
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if not lines:
        raise JobNotFoundError(f"Expected job {job_id} in Slurm accounting. Got no such job. "
                               "Check the id with `hpcai jobs`.")
    return pick_job_row([dict(zip(JOB_FIELDS, line.split("|", len(JOB_FIELDS) - 1), strict=False))
                         for line in lines], job_id)


def set_admin_comment(job_id: str, text: str) -> None:
    """sacctmgr stores it for root and the SlurmUser, also after the job ended (scontrol cannot)."""
    proc = run_slurm(["sacctmgr", "-i", "modify", "job", "where", f"jobid={parse_job_id(job_id)}", "set",
                      f"AdminComment={text}"], timeout=SLURM_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise SlurmError(f"sacctmgr could not store job {job_id}'s energy: "
                         f"{first_error_line(proc.stderr or proc.stdout)}")


def store_summary(store_root: Path, job_id: str) -> str:
    """The job's totals over its runs, composed into its current AdminComment and stored; returns the
    stored line. SlurmError when slurmdbd does not take it."""
    totals = job_totals(store_root, job_id)
    if totals is None:
        raise SlurmError(f"Expected run lines for job {job_id} in the accounting box. Got none.")
    line = acct.encode(totals)
    row = job_with_comment(job_id, timeout=SLURM_TIMEOUT_S)
    set_admin_comment(modify_id(row, job_id), acct.compose(row.get("admincomment", ""), line))
    return line


def modify_id(row: dict[str, str], job_id: str) -> str:
    """The id `sacctmgr modify job where jobid=` must be given: for an array task its display id (`378_1`),
    because the raw id of an array's last task is the array's own id and sacctmgr then changes every task
    of the array (seen on Slurm 22.05: one task's summary overwrote all the others')."""
    shown = row.get("jobid", "")
    return shown if _TASK_ID.match(shown) and row.get("jobidraw") == job_id else job_id


@dataclass(frozen=True)
class SummaryStored:
    job_id: str
    line: str | None  # None: spooled
    error: str | None = None


def end_of_run(store_root: Path, job_id: str, restart_count: int, nodes: Sequence[str],
               wait_s: float) -> SummaryStored:
    """EpilogSlurmctld: combine the ended run's nodes, then store the job's totals or spool them."""
    combine_ended_run(store_root, job_id, restart_count, nodes, wait_s=wait_s)
    try:
        line = store_summary(store_root, job_id)
    except HpcAidcError as exc:
        spool.add(store_root, job_id)
        return SummaryStored(job_id, None, str(exc))
    spool.remove(store_root, job_id)
    return SummaryStored(job_id, line)


def backfill(store_root: Path, budget_s: float = 30.0) -> list[SummaryStored]:
    """Store the spooled jobs' summaries, oldest first, within `budget_s`; stop at the first failure
    (slurmdbd is still away: trying the others now would only wait on it again)."""
    done: list[SummaryStored] = []
    deadline = time.monotonic() + budget_s
    for job_id in spool.pending(store_root):
        if time.monotonic() >= deadline:
            break
        try:
            line = store_summary(store_root, job_id)
        except JobNotFoundError as exc:
            done.append(SummaryStored(job_id, None, str(exc)))
            continue
        except HpcAidcError as exc:
            done.append(SummaryStored(job_id, None, str(exc)))
            break
        spool.remove(store_root, job_id)
        done.append(SummaryStored(job_id, line))
    return done
