"""One polling policy for everything that waits on Slurm (`submit --wait`, `hpcai wait`, `logs --follow`,
`data pack --wait`): progress and logs come from the job's own files; Slurm is asked for state

- soon after submission (2 s, then 4 s, 8 s), then at most once per STEADY_S (15 s) per client;
- sooner only when the job's files say it ended (`JobWatch.check_soon`);
- in one call for many jobs: `squeue` (slurmctld) while they are in the queue, `sacct` (slurmdbd) only for
  those that have left it;
- after an error, later: the delay doubles up to MAX_BACKOFF_S (120 s), with jitter, so that a controller
  that rate-limits or times out sees fewer calls, not the same ones again at once.

A follower of one job thus costs slurmctld 4 RPCs a minute at steady state (bench/controller_load)."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hpc_aidc.errors import SlurmError
from hpc_aidc.slurm_client import run_slurm

FIRST_S = 2.0
STEADY_S = 15.0
MAX_BACKOFF_S = 120.0
# squeue's states of a job still held by slurmctld that has not ended
_ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
           "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def next_delay(checks: int, errors: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds until the next state call: doubling from FIRST_S up to STEADY_S; after `errors` failed calls
    in a row, doubling from STEADY_S up to MAX_BACKOFF_S, with +-20 % jitter (pure but for `rng`)."""
    if errors:
        base = min(STEADY_S * 2.0 ** (errors - 1), MAX_BACKOFF_S)
        return float(base * (0.8 + 0.4 * rng()))
    return float(min(FIRST_S * 2.0 ** checks, STEADY_S))


_STATE_LINE = re.compile(r"^\s+JobState=(\S+)", re.MULTILINE)


def single_state(job_id: str) -> str | None:
    """One job's state from `scontrol show job` (one RPC; squeue's are two). The job's record holds user
    text (its name, work dir) that could fake a `JobState=` line: with anything but exactly one, None (ask
    squeue instead). None too for a job slurmctld no longer holds."""
    proc = run_slurm(["scontrol", "--local", "show", "job", job_id], check=False)
    if proc.returncode != 0:
        return None
    found = _STATE_LINE.findall(proc.stdout)
    return found[0] if len(found) == 1 and proc.stdout.startswith(f"JobId={job_id} ") else None


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """State of each job (an array: of each task, as 12_3) slurmctld still holds: one squeue call, one RPC
    for one job (--local: no federation lookup first), two for several. The fields are ids and states only
    (no user text)."""
    if not job_ids:
        return {}
    proc = run_slurm(["squeue", "--local", "--noheader", "--array", "--states=all", f"--jobs={','.join(job_ids)}",
                      "--format=%i|%A|%T"], check=False)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        raise SlurmError(f"squeue failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
    states: dict[str, str] = {}
    tasks: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = parts[2]
            if parts[0] != parts[1]:  # an array task: the array's own id stands for all its tasks
                tasks.setdefault(parts[1], []).append(parts[2])
    return {**states, **{array: combined(found) for array, found in tasks.items()}}


def ended_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Final state of jobs that have left slurmctld's queue: one sacct call (allocations only)."""
    if not job_ids:
        return {}
    proc = run_slurm(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,JobIDRaw,State",
                      f"--jobs={','.join(job_ids)}"], check=False)
    if proc.returncode != 0:
        raise SlurmError(f"sacct failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
    states: dict[str, str] = {}
    tasks: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[2]:
            word = parts[2].split(" ")[0]
            states[parts[0]] = states[parts[1]] = word
            if "_" in parts[0]:
                tasks.setdefault(parts[0].split("_")[0], []).append(word)
    return {**states, **{array: combined(found) for array, found in tasks.items()}}


def combined(states: Sequence[str]) -> str:
    """One state for an array's tasks: an active one while any is active, COMPLETED when all completed,
    else the first way one ended badly."""
    for state in states:
        if state in _ACTIVE:
            return state
    bad = [s for s in states if s != "COMPLETED"]
    return bad[0] if bad else "COMPLETED"


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Each job's state: slurmctld's while it holds them (one job: scontrol, one RPC; several or an array:
    one squeue call), then sacct for the rest (not called when none)."""
    one = single_state(job_ids[0]) if len(job_ids) == 1 and job_ids[0].isdigit() else None
    states = {job_ids[0]: one} if one is not None else {j: s for j, s in queue_states(job_ids).items() if j in job_ids}
    left = [j for j in job_ids if j not in states or states[j] not in _ACTIVE]
    if left:
        states.update({j: s for j, s in ended_states(left).items() if j in left})
    return states


def active(state: str | None) -> bool:
    return state is None or state in _ACTIVE


@dataclass
class JobWatch:
    """The states of some jobs, asked of Slurm by the policy above; `poll` returns at once with what is known
    when no call is due. `clock` and `ask` are replaceable for tests."""

    job_ids: tuple[str, ...]
    clock: Callable[[], float] = time.monotonic
    ask: Callable[[Sequence[str]], dict[str, str]] = job_states
    states: dict[str, str] = field(default_factory=dict)
    checks: int = 0
    errors: int = 0
    calls: int = 0
    _next: float = 0.0
    warned: bool = False

    def __post_init__(self) -> None:
        self._next = self.clock() + FIRST_S

    def check_soon(self) -> None:
        """The job's files say it ended: ask at the next poll, not at the next steady tick."""
        self._next = min(self._next, self.clock())

    @property
    def done(self) -> bool:
        return bool(self.states) and all(not active(self.states.get(j)) for j in self.job_ids)

    def wait_s(self) -> float:
        return max(0.0, self._next - self.clock())

    def poll(self) -> dict[str, str]:
        if self.clock() < self._next:
            return self.states
        self.calls += 1
        try:
            self.states.update(self.ask(self.job_ids))
            self.errors = 0
        except SlurmError as exc:
            self.errors += 1
            if not self.warned:
                import sys

                print(f"hpcai: Slurm did not answer ({exc}); asking again less often", file=sys.stderr)
                self.warned = True
        self.checks += 1
        self._next = self.clock() + next_delay(self.checks, self.errors)
        return self.states
