"""The submission audit: one JSON line per job in an append-only log that only slurmctld's side writes.

Who writes: slurmctld's EpilogSlurmctld (slurm/audit/epilog_slurmctld.sh), as SlurmUser, once per job
(every array task too) when its allocation ends; jobs that end without one (cancelled while pending) are
recorded by the next epilog from slurmdbd (`sweep_never_ran`). So jobs submitted with plain sbatch are
audited as well, and no user process takes part:
- identity (uid, user, account, partition, job id) comes from the variables slurmctld sets for the
  epilog, never from anything the user wrote;
- the batch script is read back from slurmctld (`scontrol write batch_script`) and hashed here;
- `via_hpcai` says the script carries hpcai's `#SBATCH --comment=hpcai-...` marker: a hint about the
  tool, never identity (anyone can write that line);
- the submit time comes from slurmdbd (sacct) and is null when slurmdbd does not answer.
The log and its directory belong to SlurmUser and nobody else may write them (slurm/devcluster/up.sh
sets this up), so a user can neither append, truncate, replace nor remove it. Reading is for admins
(`hpcai admin audit`, which decides who is one as reports do).

A job shows in the log once it has ended; until then slurmdbd holds its record, and with
AccountingStoreFlags=job_script its script (`sacct --batch-script -j ID`)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hpc_aidc.errors import AccessError, ConfigError, SlurmError
from hpc_aidc.scheduler.accounting import query_jobs, sacct_argv
from hpc_aidc.scheduler.parse import AccountingRecord, parse_sacct
from hpc_aidc.slurm_client import run_slurm

SCHEMA = "hpcai-audit-v1"
LOG_MODE = 0o640
# hpcai's marker in the scripts it writes (the audit tag of scheduler/admission.py, data pack's own).
_HPCAI_MARKER = re.compile(r"^#SBATCH[ \t]+--comment=(hpcai-[\w-]+)[ \t]*$", re.MULTILINE)


def script_facts(script: str | None) -> dict[str, Any]:
    """sha256 and size of the batch script as slurmctld holds it, and hpcai's marker in it (pure)."""
    if script is None:
        return {"script_sha256": None, "script_bytes": None, "via_hpcai": False, "hpcai_command": None}
    data = script.encode()
    marker = _HPCAI_MARKER.search(script)
    return {"script_sha256": hashlib.sha256(data).hexdigest(), "script_bytes": len(data),
            "via_hpcai": marker is not None, "hpcai_command": marker.group(1) if marker else None}


def audit_record(env: Mapping[str, str], script: str | None, submitted: datetime | None,
                 recorded: datetime) -> dict[str, Any]:
    """One log line from the epilog's environment (set by slurmctld), the script and the submit time (pure)."""
    raw = env.get("SLURM_JOB_ID", "")
    array, task = env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")
    uid = env.get("SLURM_JOB_UID", "")
    return {
        "schema": SCHEMA,
        "job_id": f"{array}_{task}" if array and task else raw,
        "job_id_raw": raw,
        "uid": int(uid) if uid.isdigit() else None,
        "user": env.get("SLURM_JOB_USER") or None,
        "account": env.get("SLURM_JOB_ACCOUNT") or None,
        "partition": env.get("SLURM_JOB_PARTITION") or None,
        "job_name": env.get("SLURM_JOB_NAME") or None,
        "submitted": submitted.astimezone(UTC).isoformat() if submitted else None,
        "recorded": recorded.astimezone(UTC).isoformat(),
        **script_facts(script),
    }


def batch_script(job_id_raw: str) -> str | None:
    """The job's batch script as slurmctld keeps it; None for jobs without one (srun, salloc)."""
    proc = run_slurm(["scontrol", "write", "batch_script", job_id_raw, "-"], timeout=20, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout


def submit_time(job_id_raw: str) -> datetime | None:
    try:
        records = query_jobs(job_ids=[job_id_raw], all_users=True)
    except SlurmError:
        return None
    return next((r.submit for r in records if r.job_id_raw == job_id_raw), None)


def record_job(log: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Collect the job's record and append it (the epilog's work)."""
    raw = env.get("SLURM_JOB_ID", "")
    if not raw.isdigit():
        raise ConfigError(f"Expected SLURM_JOB_ID set by slurmctld. Got {raw!r} instead. Run this from "
                          "EpilogSlurmctld only.")
    record = audit_record(env, batch_script(raw), submit_time(raw), datetime.now(UTC))
    append_record(log, record)
    return record


# -- jobs that never ran -------------------------------------------------------------------------------------
# A job cancelled while pending (by its user, an admin, or a failed dependency) ends without an allocation,
# and slurmctld runs no EpilogSlurmctld for it. Every epilog therefore also records, from slurmdbd, the jobs
# that ended that way since the previous sweep (the window's end is kept in <log>.cursor), so each is
# recorded once. SWEEP_LAG leaves slurmdbd time to receive a cancellation before its window is closed.
SWEEP_LAG = timedelta(seconds=5)
FIRST_SWEEP = timedelta(days=1)
NEVER_RAN = "None assigned"  # sacct's NodeList of a job that never had an allocation


def parse_batch_script(text: str) -> str | None:
    """`sacct --batch-script -j ID` -> the script as sbatch received it (pure); None when there is none."""
    head, sep, rest = text.partition("\n")
    if not sep or not head.startswith("Batch Script for"):
        return None
    _, sep, body = rest.partition("\n")  # the rule under the title
    if not sep or body.strip() == "NONE":
        return None
    return body.removesuffix("\n")  # sacct ends the script with a newline of its own


def unstarted_record(r: AccountingRecord, uid: int | None, script: str | None, recorded: datetime) -> dict[str, Any]:
    """The record of a job that never ran, from slurmdbd's row (pure)."""
    return {
        "schema": SCHEMA, "job_id": r.job_id, "job_id_raw": r.job_id_raw, "uid": uid, "user": r.user or None,
        "account": r.account or None, "partition": r.partition or None, "job_name": r.name or None,
        "submitted": r.submit.astimezone(UTC).isoformat() if r.submit else None,
        "recorded": recorded.astimezone(UTC).isoformat(), "never_ran": True, **script_facts(script),
    }


def _slurm_time(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S")  # sacct reads local time


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def sweep_never_ran(log: Path, now: datetime) -> list[dict[str, Any]]:
    """Record the jobs that ended without ever running since the last sweep; returns their records."""
    from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at, file_lock

    cursor = log.with_name(log.name + ".cursor")
    with file_lock(log.with_name(log.name + ".lock")):
        try:
            since = datetime.fromtimestamp(int(cursor.read_text().strip()), UTC)
        except (FileNotFoundError, ValueError):
            since = now - FIRST_SWEEP
        until = (now - SWEEP_LAG).replace(microsecond=0)  # whole seconds, as sacct's times and the cursor
        if until <= since:
            return []
        argv = [*sacct_argv(all_users=True, since=_slurm_time(since), until=_slurm_time(until)), "--state=CANCELLED"]
        rows = [r for r in parse_sacct(run_slurm(argv).stdout)
                if r.nodelist == NEVER_RAN and r.end and since.timestamp() <= r.end.timestamp() < until.timestamp()]
        done = []
        for r in rows:
            script = parse_batch_script(run_slurm(["sacct", "--batch-script", "-j", r.job_id_raw], check=False).stdout)
            done.append(unstarted_record(r, _uid(r.user), script, now))
            append_record(log, done[-1])
        dir_fd = os.open(log.parent, DIR_FLAGS)
        try:
            atomic_write_at(dir_fd, cursor.name, f"{int(until.timestamp())}\n".encode(), mode=LOG_MODE)
        finally:
            os.close(dir_fd)
    return done


def append_record(log: Path, record: Mapping[str, Any]) -> None:
    """Append one line to the log: opened relative to its directory without following links, only a
    regular file owned by this user (SlurmUser), under an exclusive lock, in one write."""
    line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
    from hpc_aidc.fsutil import DIR_FLAGS

    try:
        dir_fd = os.open(log.parent, DIR_FLAGS)
        try:
            fd = os.open(log.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         LOG_MODE, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except PermissionError:
        raise AccessError(f"Expected write access to the audit log {log}. Got permission denied. Only "
                          "slurmctld's epilog (SlurmUser) writes it.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"Expected the audit log {log} to be a regular file of uid {os.geteuid()}. Got "
                              f"owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}. Move it away.")
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class AuditLog:
    records: list[dict[str, Any]]
    unreadable_lines: int


def parse_log(lines: Iterable[str]) -> AuditLog:
    """The log's records; lines that are not one of ours are counted, not shown (pure)."""
    records: list[dict[str, Any]] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(value, dict) and value.get("schema") == SCHEMA:
            records.append(value)
        else:
            bad += 1
    return AuditLog(records, bad)


def read_log(log: Path) -> AuditLog:
    try:
        with log.open(errors="replace") as fh:
            return parse_log(fh)
    except FileNotFoundError:
        return AuditLog([], 0)  # nothing ended since the audit was set up
    except PermissionError:
        raise AccessError(f"Expected read access to the audit log {log}. Got permission denied. Ask root to "
                          "add you to the log's group (slurm/audit/README.md).") from None


def _when(record: Mapping[str, Any]) -> float | None:
    text = record.get("submitted") or record.get("recorded")
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def select(records: Sequence[Mapping[str, Any]], *, since: int | None = None, until: int | None = None,
           users: Sequence[str] = (), accounts: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Records submitted in [since, until) (unix times) of the given users and accounts, oldest first (pure).
    A requeued job has a record per run (each run's end runs the epilog): it is listed once, as its first
    record (the original submission), with the number of runs recorded."""
    runs: dict[str, int] = {}
    first: list[Mapping[str, Any]] = []
    for r in records:
        key = str(r.get("job_id_raw"))
        runs[key] = runs.get(key, 0) + 1
        if runs[key] == 1:
            first.append(r)
    out: list[dict[str, Any]] = []
    for r in first:
        when = _when(r)
        if since is not None and (when is None or when < since):
            continue
        if until is not None and (when is None or when >= until):
            continue
        if users and r.get("user") not in users:
            continue
        if accounts and r.get("account") not in accounts:
            continue
        out.append({**r, "runs": runs[str(r.get("job_id_raw"))]})
    return sorted(out, key=lambda r: (_when(r) or 0.0, str(r.get("job_id_raw"))))
