"""What a report reads when the site has an accounting store (the edge: files and one small sacct call):
the store's files for the period's months and the viewer's accounts, plus the live tail from sacct
(every allocation not stored yet: ended after the watermark, running, pending)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpc_aidc.report import source
from hpc_aidc.report.aggregate import Filters
from hpc_aidc.report.period import Period
from hpc_aidc.report.store.layout import read_state
from hpc_aidc.report.store.listing import list_store
from hpc_aidc.report.store.rollup import Rollups, local_zone
from hpc_aidc.report.store.table import TailRows, month_of, tail_rows

STALE_S = 86400  # a watermark older than this gets a note: the ingest has stopped running


# The live tail, once sacct has answered: every allocation not stored yet, and the jobs that ran more than
# once and have a run in it (their stored runs may have been stored as a job's only run: the query flags
# them, query._merge_tail).
Tail = tuple[TailRows, tuple[str, ...]]


@dataclass(frozen=True)
class StoreInputs:
    files: tuple[str, ...]
    watermark: int
    note: str | None  # one line for stderr (stale store), or None
    later: Callable[[], Tail]  # the tail: waits for sacct the first time (the query reads the store meanwhile)
    rollups: Rollups | None = None  # the partitions' daily rollups, when all have them (rollup)


def months_between(start: int, end: int) -> list[str]:
    """Local months from the one holding `start` to the one holding `end`, in order."""
    first, last = month_of(start), month_of(end)
    year, month = int(first[:4]), int(first[5:])
    out = []
    while True:
        label = f"{year:04d}-{month:02d}"
        out.append(label)
        if label >= last:
            return out
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def store_inputs(root: Path, period: Period, filters: Filters, *, all_accounts: bool) -> StoreInputs | None:
    """The store's part of a report; None when there is no store yet or the viewer cannot read every
    account asked for (the caller then reads sacct, as without a store)."""
    state = read_state(root)
    if state is None or state.watermark is None:
        return None
    wm = state.watermark
    accounts = None if all_accounts and not filters.accounts else frozenset(filters.accounts)
    months = months_between(period.start, max(period.start, min(wm, period.end + state.max_span_s)))
    tail_start = min(wm, period.now)
    call = source.start_window_lines(tail_start, max(period.now, tail_start + 1), filters)
    listing = list_store(root, accounts, months)
    if listing.denied:
        call.cancel()
        return None
    # the rollups' days must be this machine's local days
    rollups = listing.rollups if state.days_zone == local_zone() else None

    @functools.cache
    def later() -> Tail:
        rows = tail_rows(call.lines("The report store"))
        return rows, rows.multi_run_jobs()

    note = None
    if period.now - wm > STALE_S:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(wm))
        note = (f"note: the report store was last brought up to date at {when}; what ended since comes from "
                "Slurm (slower). Ask your admins to check `hpcai report ingest`.")
    return StoreInputs(listing.files, wm, note, later, rollups)
