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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hpc_aidc.errors import AccessError, ConfigError, SlurmError
from hpc_aidc.scheduler.accounting import query_jobs
from hpc_aidc.scheduler.parse import AccountingRecord
from hpc_aidc.scheduler.slurm_version import SlurmVersion, parse_version, sacct_adds_script_newline
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
# that ended that way since the previous sweep. SWEEP_LAG leaves slurmdbd time to receive a cancellation
# before its window is closed.
# Thousands of such jobs (a user's cancelled backlog) must neither make one epilog overrun its time limit nor
# make the others queue behind it: each sweep records at most `max_jobs` for at most `max_seconds`, in
# (end time, job id) order, and moves the cursor (<log>.cursor: "END_UNIX_SECOND JOBID", every never-ran job
# at or before it is recorded) past each job as soon as its line is written; a sweep that finds another
# holding the lock leaves the work to it. So nothing is recorded twice (a sweep killed between a line and its
# cursor finds the line at the log's end) and every job is recorded by some later epilog.
SWEEP_LAG = timedelta(seconds=5)
FIRST_SWEEP = timedelta(days=1)
NEVER_RAN = "None assigned"  # sacct's NodeList of a job that never had an allocation
SWEEP_JOBS = 200             # defaults of `hpcai admin audit-record` (energy.env: HPCAI_AUDIT_SWEEP_JOBS,
SWEEP_SECONDS = 10.0         # HPCAI_AUDIT_SWEEP_SECONDS), well inside the epilog's 30 s
_TAIL_BYTES = 256 << 10      # the log's end read for a line written just before a sweep was killed
Cursor = tuple[int, int]     # (end, as a unix second; job id)


def parse_batch_script(text: str, version: SlurmVersion | None = None) -> str | None:
    """`sacct --batch-script -j ID` -> the script as sbatch received it (pure); None when there is none.
    `version`: sacct's (`sacct --version`). Before 24.11 sacct ends the script with a newline of its own, from
    24.11 on it prints the script exactly; unknown, one newline is taken for sacct's only after another
    (right for every script that ends in exactly one newline, as nearly all do)."""
    head, sep, rest = text.partition("\n")
    if not sep or not head.startswith("Batch Script for"):
        return None
    _, sep, body = rest.partition("\n")  # the rule under the title
    if not sep or body.strip() == "NONE":
        return None
    if version is None:
        return body.removesuffix("\n") if body.endswith("\n\n") else body
    return body.removesuffix("\n") if sacct_adds_script_newline(version) else body


def sacct_version() -> SlurmVersion | None:
    """The version of the sacct on PATH (`sacct --version`: no RPC)."""
    proc = run_slurm(["sacct", "--version"], timeout=20, check=False)
    return parse_version(proc.stdout) if proc.returncode == 0 else None


def unstarted_record(r: AccountingRecord, uid: int | None, script: str | None, recorded: datetime) -> dict[str, Any]:
    """The record of a job that never ran, from slurmdbd's row (pure)."""
    return {
        "schema": SCHEMA, "job_id": r.job_id, "job_id_raw": r.job_id_raw, "uid": uid, "user": r.user or None,
        "account": r.account or None, "partition": r.partition or None, "job_name": r.name or None,
        "submitted": r.submit.astimezone(UTC).isoformat() if r.submit else None,
        "recorded": recorded.astimezone(UTC).isoformat(), "never_ran": True, **script_facts(script),
    }


def parse_cursor(text: str) -> Cursor | None:
    """The cursor file (pure). The older form, one number (the end of the last window, exclusive), means every
    job that ended before that second."""
    words = text.split()
    if not words or not all(w.isdigit() for w in words) or len(words) > 2:
        return None
    if len(words) == 1:
        return (int(words[0]) - 1, 1 << 62)
    return (int(words[0]), int(words[1]))


def format_cursor(cursor: Cursor) -> str:
    return f"{cursor[0]} {cursor[1]}\n"


def sweep_key(r: AccountingRecord) -> Cursor:
    assert r.end is not None
    return (int(r.end.timestamp()), int(r.job_id_raw))


def pending_never_ran(rows: Iterable[AccountingRecord], cursor: Cursor, until: int) -> list[AccountingRecord]:
    """The jobs that never ran, ended after the cursor and before `until` (a unix second), oldest first, each
    once (pure)."""
    found: dict[str, AccountingRecord] = {}
    for r in rows:
        if r.nodelist != NEVER_RAN or r.end is None or not r.job_id_raw.isdigit():
            continue
        key = sweep_key(r)
        if cursor < key and key[0] < until:
            found.setdefault(r.job_id_raw, r)
    return sorted(found.values(), key=sweep_key)


def recorded_never_ran(tail: bytes, whole: bool) -> set[str]:
    """Job ids of the never-ran records among the log's last lines (pure); unless `tail` is the whole log, its
    first line may be cut and is skipped."""
    lines = tail.decode(errors="replace").splitlines()
    return {str(r.get("job_id_raw")) for r in parse_log(lines if whole else lines[1:]).records if r.get("never_ran")}


def _slurm_time(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S")  # sacct reads local time


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


@dataclass(frozen=True)
class Sweep:
    records: list[dict[str, Any]]
    left: int          # jobs of this window left for later sweeps (budget spent)
    busy: bool = False  # another sweep held the lock: nothing done here


def _try_lock(dir_fd: int, name: str) -> int | None:
    """An exclusive flock on <dir>/name without waiting; None when another sweep holds it."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read_at(dir_fd: int, name: str, limit: int, tail: bool = False) -> tuple[bytes, bool]:
    """Up to `limit` bytes of a regular file in the directory (its last ones with `tail`), without following a
    link, and whether that is the whole file; (b"", True) when it is not there."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return b"", True
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", True
        size = min(st.st_size, limit)
        return os.pread(fd, size, st.st_size - size if tail else 0), size == st.st_size
    finally:
        os.close(fd)


def sweep_never_ran(log: Path, now: datetime, max_jobs: int = SWEEP_JOBS, max_seconds: float = SWEEP_SECONDS,
                    clock: Callable[[], float] = time.monotonic) -> Sweep:
    """Record jobs that ended without ever running since the cursor, within the budget (see above)."""
    from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at

    deadline = clock() + max_seconds
    cursor_name = log.name + ".cursor"
    dir_fd = os.open(log.parent, DIR_FLAGS)
    try:
        lock = _try_lock(dir_fd, log.name + ".lock")
        if lock is None:
            return Sweep([], 0, busy=True)
        try:
            cursor = parse_cursor(_read_at(dir_fd, cursor_name, 4096)[0].decode(errors="replace"))
            if cursor is None:
                cursor = (int((now - FIRST_SWEEP).timestamp()), 0)
            until = int((now - SWEEP_LAG).timestamp())  # whole seconds, as sacct's times and the cursor
            if until <= cursor[0]:
                return Sweep([], 0)
            rows = query_jobs(all_users=True, since=_slurm_time(datetime.fromtimestamp(cursor[0], UTC)),
                              until=_slurm_time(datetime.fromtimestamp(until, UTC)), states=["CANCELLED"])
            todo = pending_never_ran(rows, cursor, until)
            already = recorded_never_ran(*_read_at(dir_fd, log.name, _TAIL_BYTES, tail=True)) if todo else set()
            done: list[dict[str, Any]] = []
            version = sacct_version() if todo else None
            for n, r in enumerate(todo):
                if n >= max_jobs or clock() >= deadline:
                    return Sweep(done, len(todo) - n)
                if r.job_id_raw not in already:
                    proc = run_slurm(["sacct", "--batch-script", "-j", r.job_id_raw], check=False)
                    done.append(unstarted_record(r, _uid(r.user), parse_batch_script(proc.stdout, version),
                                                 now))
                    append_record(log, done[-1])
                atomic_write_at(dir_fd, cursor_name, format_cursor(sweep_key(r)).encode(), mode=LOG_MODE)
            # The whole window is recorded: next time starts at its end.
            atomic_write_at(dir_fd, cursor_name, format_cursor((until - 1, 1 << 62)).encode(), mode=LOG_MODE)
            return Sweep(done, 0)
        finally:
            os.close(lock)
    finally:
        os.close(dir_fd)


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
