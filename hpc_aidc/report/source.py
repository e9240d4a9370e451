"""Where report rows come from (the edge: subprocess and files). One sacct call per report period,
never a call per job; or the same sacct-format lines from a file (`--from-file`), which big inputs
read in parallel chunks (one per core) and merge."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from hpc_aidc.errors import ConfigError, SlurmError
from hpc_aidc.report.aggregate import Acc, Filters, accumulate
from hpc_aidc.report.period import Period, iso
from hpc_aidc.report.rows import NFIELDS, REPORT_FIELDS
from hpc_aidc.scheduler.fence import Fence, say_quarantined, unfence
from hpc_aidc.scheduler.parse import slurmdbd_down_message, slurmdbd_unreachable
from hpc_aidc.slurm_client import SlurmCall, first_error_line

WORKERS_ENV = "HPCAI_REPORT_WORKERS"  # processes for big --from-file inputs (default: one per core)
PARALLEL_MIN_BYTES = 64 << 20  # below this, one process is faster than starting workers


def report_sacct_argv(fence: Fence, period: Period, filters: Filters) -> list[str]:
    """The one sacct call of a report: every allocation (all runs of requeued jobs) that was eligible
    or running in the period, for the accounts/users/partitions asked for."""
    argv = ["sacct", *fence.sacct_args(REPORT_FIELDS), "--allocations", "--duplicates", "--allusers",
            f"--starttime={iso(period.start)}", f"--endtime={iso(period.end)}"]
    if filters.accounts:
        argv.append(f"--accounts={','.join(sorted(filters.accounts))}")
    if filters.users:
        argv.append(f"--user={','.join(sorted(filters.users))}")
    if filters.partitions:
        argv.append(f"--partition={','.join(sorted(filters.partitions))}")
    return argv


class ReportCall:
    """A started, fenced report sacct call (scheduler.fence): the caller's own work overlaps Slurm's answer,
    and no user-written text can add, split or hide a row of it."""

    def __init__(self, argv: Callable[[Fence], list[str]]) -> None:
        self.fence = Fence.new()
        self.call = SlurmCall(argv(self.fence), timeout=600.0)

    def lines(self, needs: str) -> list[str]:
        """Its rows as REPORT_FIELDS lines; its failure as one line that says what `needs` it."""
        proc = self.call.result(check=False)
        if proc.returncode != 0 and slurmdbd_unreachable(proc.stderr):
            raise SlurmError(slurmdbd_down_message(proc.stderr, needs))
        if proc.returncode != 0:
            raise SlurmError(f"sacct failed: {first_error_line(proc.stderr or proc.stdout)}")
        rows = unfence(proc.stdout, self.fence, NFIELDS + 1)
        say_quarantined(rows, "sacct's output")
        return rows.lines

    def cancel(self) -> None:
        self.call.cancel()


def sacct_lines(period: Period, filters: Filters) -> list[str]:
    return ReportCall(lambda fence: report_sacct_argv(fence, period, filters)).lines("A usage report")


def read_lines(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"Expected a readable sacct-format file at {path}. Got {exc.strerror}. "
                          "Check the path given to --from-file.") from None


def _chunk_bounds(path: Path, parts: int) -> list[tuple[int, int]]:
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as f:
        for i in range(1, parts):
            f.seek(size * i // parts)
            f.readline()  # move to the start of the next line
            cuts.append(max(f.tell(), cuts[-1]))
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _accumulate_chunk(args: tuple[str, int, int, Period, tuple[str, ...], Filters]) -> dict[tuple[str, ...], Acc]:
    path, a, b, period, dims, filters = args
    with open(path, "rb") as f:
        f.seek(a)
        text = f.read(b - a).decode("utf-8", errors="replace")
    return accumulate(text.splitlines(), period, dims, filters)


def accumulate_file(path: Path, period: Period, dimensions: Sequence[str], filters: Filters,
                    workers: int | None = None) -> dict[tuple[str, ...], Acc]:
    """Group sums of a sacct-format file; files above PARALLEL_MIN_BYTES use one process per core.
    (A requeued job's earlier runs count no energy of their own only when its newest run lands in the same
    chunk; sacct prints a job's runs next to each other, so a chunk edge between them is rare.)"""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"Expected a readable sacct-format file at {path}. Got {exc.strerror}. "
                          "Check the path given to --from-file.") from None
    import multiprocessing  # only here: a report from the store or sacct needs none

    dims = tuple(dimensions)
    count = workers if workers is not None else int(os.environ.get(WORKERS_ENV, "0") or 0) or (os.cpu_count() or 1)
    if count <= 1 or size < PARALLEL_MIN_BYTES or "fork" not in multiprocessing.get_all_start_methods():
        return accumulate(read_lines(path), period, dims, filters)
    jobs = [(str(path), a, b, period, dims, filters) for a, b in _chunk_bounds(path, count)]
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        parts = pool.map(_accumulate_chunk, jobs)
    merged: dict[tuple[str, ...], Acc] = {}
    for part in parts:
        for key, acc in part.items():
            if key in merged:
                merged[key].merge(acc)
            else:
                merged[key] = acc
    return merged


def window_lines(start: int, end: int, filters: Filters | None = None) -> list[str]:
    """Every allocation that was eligible or running at some time in [start, end] (running ones too)."""
    return start_window_lines(start, end, filters).lines("The report store")


def start_window_lines(start: int, end: int, filters: Filters | None = None) -> ReportCall:
    """window_lines' sacct call, started: its `lines` come later."""
    return ReportCall(lambda fence: report_sacct_argv(fence, Period(start, end, end), filters or Filters()))


def job_lines(job_ids: Sequence[str]) -> list[str]:
    """Every run of the given jobs, whenever they ran."""
    if not job_ids:
        return []
    return ReportCall(lambda fence: ["sacct", *fence.sacct_args(REPORT_FIELDS), "--allocations", "--duplicates",
                                     "--allusers", f"--jobs={','.join(job_ids)}"]).lines("The report store")
