"""Batch inference on Slurm: job-array windows below MaxArraySize, their submission, and which array
tasks are still pending or running (one sacct call over all of a run's arrays)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hpc_aidc.slurm_client import run_slurm

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING",
          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
_MAX_ARRAY = re.compile(r"^MaxArraySize\s*=\s*(\d+)", re.MULTILINE)
# 123_4, 123_[1-3%2], 123_[1,5-7]
_ARRAY_ROW = re.compile(r"^(?P<job>\d+)_(?:(?P<one>\d+)|\[(?P<many>[0-9,\-]+)(?:%\d+)?\])$")


def parse_max_array_size(scontrol_config: str) -> int:
    m = _MAX_ARRAY.search(scontrol_config)
    return int(m.group(1)) if m else 1001  # Slurm's default


def max_array_size() -> int:
    """The cluster's MaxArraySize (array index values must stay below it). HPCAI_MAX_ARRAY_SIZE may only
    lower it (tests; sites that want smaller arrays)."""
    cap = parse_max_array_size(run_slurm(["scontrol", "show", "config"]).stdout)
    override = os.environ.get("HPCAI_MAX_ARRAY_SIZE", "")
    return min(cap, int(override)) if override.isdigit() and int(override) > 0 else cap


def expand_indices(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


@dataclass(frozen=True)
class ArrayRow:
    job: str
    indices: tuple[int, ...]
    state: str


def parse_array_states(sacct_out: str) -> list[ArrayRow]:
    """`sacct -X -n -P -o jobid,state` of array jobs: one row per task, or one compact row for tasks
    not started yet (`123_[1-3%2]|PENDING`)."""
    rows = []
    for line in sacct_out.splitlines():
        jobid, _, state = line.strip().partition("|")
        task = array_task(jobid)
        if task is not None:
            rows.append(ArrayRow(task[0], task[1], state.split()[0] if state else ""))
    return rows


def array_task(jobid: str) -> tuple[str, tuple[int, ...]] | None:
    """(array job id, task indices) of an array row's job id (`123_4`, `123_[1-3%2]`), else None."""
    m = _ARRAY_ROW.match(jobid)
    if not m:
        return None
    return m.group("job"), tuple([int(m.group("one"))] if m.group("one") else expand_indices(m.group("many")))


def active_tasks(arrays: Sequence[tuple[str, int]]) -> dict[int, str]:
    """Global task indices (window offset + array index) still pending or running, with their state, for
    (array job id, offset) pairs: sacct (compact rows for tasks not started), then squeue -r on top."""
    if not arrays:
        return {}
    offsets = dict(arrays)
    ids = ",".join(offsets)
    proc = run_slurm(["sacct", "-X", "-n", "-P", "-o", "jobid,state", "-j", ids], check=False)
    states: dict[tuple[str, int], str] = {}
    if proc.returncode == 0:
        for row in parse_array_states(proc.stdout):
            for i in row.indices:
                states[(row.job, i)] = row.state  # the last row of a task is its latest run
    queue = run_slurm(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ids], check=False)
    if queue.returncode == 0:
        for row in parse_array_states(queue.stdout):
            for i in row.indices:
                states[(row.job, i)] = row.state
    return {offsets[job] + i: state for (job, i), state in states.items() if state in ACTIVE and job in offsets}
