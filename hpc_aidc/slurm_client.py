"""Running Slurm's client commands: the one place for the subprocess call and its error handling (the
funnel every call to Slurm goes through), used by scheduler/ on the login node and by node/ inside an
allocation (a job requeueing itself)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from hpc_aidc.errors import SlurmError


def slurm_available(command: str = "sbatch") -> bool:
    return shutil.which(command) is not None


class SlurmCall:
    """A Slurm client command started now and answered later, so the caller's own work (imports, file
    listings) overlaps Slurm's answer; `result` raises the errors run_slurm raises."""

    def __init__(self, argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0,
                 env: Mapping[str, str] | None = None) -> None:
        self.argv, self.stdin, self.timeout = list(argv), stdin, timeout
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         # user text (job names) may hold any bytes: never a traceback
                                         encoding="utf-8", errors="replace",
                                         env={**os.environ, **env} if env else None)
        except FileNotFoundError:
            raise SlurmError(
                f"Expected Slurm's client command {argv[0]!r} on PATH. Got none. Run hpcai on a login node "
                "(or `hpcai devcluster up` for the dev cluster)."
            ) from None

    def result(self, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            out, err = self.proc.communicate(self.stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise SlurmError(
                f"Expected {self.argv[0]} to answer within {self.timeout:.0f} s. Got no answer. Slurm may be "
                "overloaded or down; try again shortly or ask your admins."
            ) from None
        proc = subprocess.CompletedProcess(self.argv, self.proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise SlurmError(f"{self.argv[0]} failed: {first_error_line(proc.stderr or proc.stdout)}")
        return proc

    def cancel(self) -> None:
        self.proc.kill()
        self.proc.communicate()


# What Slurm's clients print when slurmctld or slurmdbd is busy (a rate limit with rl_enable, a socket
# time-out under load): an answer to ask for again later, not one to act on.
_BUSY = ("Socket timed out", "Unable to contact slurm controller", "rate limit", "Too many", "temporarily unavailable",
         "Zero Bytes were transmitted or received")
_QUERIES = {"squeue", "sacct", "sinfo", "sdiag", "sprio", "sshare", "sreport"}
RETRIES = 3
_said_busy = False


def busy(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode != 0 and any(mark in proc.stderr for mark in _BUSY)


def is_query(argv: Sequence[str]) -> bool:
    """Commands that only read (asking again changes nothing); never sbatch: a time-out may have submitted."""
    return bool(argv) and (argv[0] in _QUERIES or (argv[0] in ("scontrol", "sacctmgr") and "show" in argv[1:3]))


def retry_delay(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """1, 2, 4 s, each with +-50 % jitter: a crowd of clients does not come back at the same moment."""
    return float(2.0 ** attempt * (0.5 + rng()))


def run_slurm(argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0,
              check: bool = True, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command; a failure becomes a one-line SlurmError with Slurm's own words.
    `env`: variables added to this process's environment (sbatch passes them on to the job). A query that
    finds Slurm busy is asked again after a growing, jittered delay, and says so once."""
    global _said_busy
    for attempt in range(RETRIES + 1):
        proc = SlurmCall(argv, stdin=stdin, timeout=timeout, env=env).result(check=False)
        if attempt == RETRIES or not is_query(argv) or not busy(proc):
            break
        if not _said_busy:
            print(f"hpcai: Slurm is busy ({first_error_line(proc.stderr)}); asking again in a moment",
                  file=sys.stderr)
            _said_busy = True
        time.sleep(retry_delay(attempt))
    if check and proc.returncode != 0:
        raise SlurmError(f"{argv[0]} failed: {first_error_line(proc.stderr or proc.stdout)}")
    return proc


# sbatch's last line when a job_submit plugin refuses a job (seen on 24.11 and 26.05:
# tests/recorded/slurm-*/sbatch_policy_refused.txt): the plugin's own message (slurm.log_user, e.g. the site
# policy's HPCAI-P00N line) is the error line before it.
_GENERIC_REFUSAL = "Batch job submission failed: Unspecified error"


def first_error_line(text: str) -> str:
    """Slurm's most telling line: the last 'error:' line, without the program prefix (the one before it when
    the last is sbatch's generic refusal after a job_submit plugin's message)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line.split("error:", 1)[-1].strip() for line in lines if "error:" in line]
    if len(errors) > 1 and errors[-1] == _GENERIC_REFUSAL:
        errors.pop()
    return errors[-1] if errors else (lines or ["(no output)"])[-1]


def requeue(target: str) -> str | None:
    """`scontrol requeue TARGET` from inside the job (TARGET: JOBID, or JOBID_TASKID for an array task);
    None when Slurm took it, else Slurm's one-line reason (the caller logs it: the job then ends as it
    would without a requeue, and its checkpoint stays)."""
    try:
        proc = run_slurm(["scontrol", "requeue", target], check=False, timeout=30)
    except SlurmError as exc:
        return str(exc)
    return None if proc.returncode == 0 else first_error_line(proc.stderr or proc.stdout)
