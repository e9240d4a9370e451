"""`hpcai report ingest`: bring the accounting store up to date, incrementally and idempotently.

Each run reads from Slurm only what ended since the watermark (less `overlap_s`, so records slurmdbd
received late are still seen), in windows of `window_s`, and moves the watermark after each window: an
interrupted ingest resumes where it stopped, and a re-run or an overlap changes nothing (rows are keyed
by job id, submit and start time, and written only when new or changed). It stops `settle_s` before now, so
the energy summary that EpilogSlurmctld writes seconds after a job ends is usually there already; a
summary that arrives later (slurmdbd was away and the job sat in the energy spool) is caught by
re-reading the jobs that were spooled when they were stored ("awaiting"). Every run of a job that ran
more than once is read again when one of its runs is stored, since the final summary is written onto
all of them (and they carry `multi_run`, the only rows whose summary a report must count once)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from hpc_aidc.report.store.layout import StoreState, storable_account
from hpc_aidc.report.store.rollup import local_zone
from hpc_aidc.report.store.table import month_of, multi_run_ids, to_table
from hpc_aidc.report.store.writer import StoreWriter
from hpc_aidc.scheduler.parse import SACCT_DELIMITER

Fetch = Callable[[int, int], list[str]]  # sacct report lines of [start, end]
FetchJobs = Callable[[Sequence[str]], list[str]]  # sacct report lines of these jobs (all runs)
AWAIT_LIMIT = 10_000  # jobs kept waiting for a late summary (oldest dropped first)


@dataclass(frozen=True)
class IngestResult:
    windows: int
    rows_read: int
    rows_written: int
    watermark: int | None
    awaiting: int


@dataclass(frozen=True)
class LinesStored:
    read: int = 0
    written: int = 0
    span: int = 0  # longest end - (start or submit)
    last_end: int | None = None
    missing: tuple[str, ...] = ()  # raw ids of finished runs without an energy summary


def store_lines(writer: StoreWriter, lines: Sequence[str], upto: int | None) -> LinesStored:
    """Upsert the finished allocations of `lines` that ended at or before `upto` (None: all)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = to_table(lines)
    if upto is not None:
        table = table.filter(pc.less_equal(table.column("end"), upto))
    if not table.num_rows:
        return LinesStored()
    ends = table.column("end").to_pylist()
    starts = table.column("start").to_pylist()
    submits = table.column("submit").to_pylist()
    span = max(e - (s if s is not None else (sub if sub is not None else e))
               for e, s, sub in zip(ends, starts, submits, strict=True))
    accounts = table.column("account").to_pylist()
    months: dict[int, str] = {}  # localtime once per minute, not per row (zones are whole minutes)
    parts: dict[tuple[str, str], list[int]] = {}
    for i, (account, end) in enumerate(zip(accounts, ends, strict=True)):
        month = months.get(end // 60)
        if month is None:
            month = months[end // 60] = month_of(end)
        parts.setdefault((account, month), []).append(i)
    written = 0
    for (account, month), rows in sorted(parts.items()):
        if not storable_account(account):
            # one bad row never stops an ingest (the watermark would never move again): said, and left out
            print(f"hpcai: warning: ingest left out {len(rows)} row(s) of account {account!r} (month {month}): "
                  "not a plain account name", file=sys.stderr)
            continue
        written += writer.upsert(account, month, table.take(pa.array(rows, pa.int64())).drop_columns(["account"]))
    raws = table.column("job_id_raw").to_pylist()
    states = table.column("state").to_pylist()
    missing = [r for r, p, s in zip(raws, table.column("e_present").to_pylist(), states, strict=True)
               if not p and s != "REQUEUED"]
    return LinesStored(table.num_rows, written, span, max(ends), tuple(missing))


def with_every_run(lines: list[str], fetch_jobs: FetchJobs) -> list[str]:
    """`lines` where every job that ran more than once has all its runs (read again: the final summary
    is written onto every run, and its multi_run flag must be on all of them)."""
    multi = multi_run_ids(lines)
    if not multi:
        return lines
    keep = [ln for ln in lines if ln.split(SACCT_DELIMITER, 2)[1] not in multi]
    return keep + fetch_jobs(sorted(multi))


def ingest(writer: StoreWriter, state: StoreState, *, now: int, start: int, fetch: Fetch, fetch_jobs: FetchJobs,
           spooled: Callable[[], set[str]], window_s: int = 86400, settle_s: int = 120, overlap_s: int = 3600,
           progress: Callable[[int, int, int, int], None] | None = None) -> IngestResult:
    """Ingest [watermark - overlap_s (or `start` for an empty store), now - settle_s] window by window.
    The caller holds the writer's lock and gives the current state; the new state is written as it goes."""
    target = now - settle_s
    a = max(start, state.watermark - overlap_s) if state.watermark is not None else start
    state = _zone_checked(writer, state)
    windows = read = written = 0
    awaiting = list(state.awaiting)
    # Late summaries first: jobs stored while their summary was still spooled. The spool is read before
    # sacct, so a job whose summary lands in between stays awaited once more, never dropped unread.
    if awaiting:
        still = spooled()
        got = store_lines(writer, fetch_jobs(awaiting), state.watermark)
        awaiting = [j for j in awaiting if j in still]
        state = replace(state, awaiting=tuple(awaiting), max_span_s=max(state.max_span_s, got.span))
        writer.write_state(state)
        read, written = got.read, got.written
    while a < target:
        b = min(a + window_s, target)
        got = store_lines(writer, with_every_run(fetch(a, b), fetch_jobs), b)
        r, w, span = got.read, got.written, got.span
        spool = spooled() if got.missing else set()
        awaiting += [j for j in got.missing if j in spool and j not in awaiting]
        state = replace(state, watermark=b, max_span_s=max(state.max_span_s, span),
                        awaiting=tuple(awaiting[-AWAIT_LIMIT:]))
        writer.write_state(state)
        windows, read, written = windows + 1, read + r, written + w
        if progress is not None:
            progress(a, b, r, w)
        a = b
    state = _rolled_up(writer, state)
    return IngestResult(windows, read, written, state.watermark, len(state.awaiting))


def ingest_file(writer: StoreWriter, state: StoreState, lines: Sequence[str]) -> IngestResult:
    """Load an sacct dump (`hpcai report fields` format), e.g. history from before the store existed.
    The watermark moves to the dump's last end when that is later: the dump is taken as complete."""
    state = _zone_checked(writer, state)
    got = store_lines(writer, lines, None)
    marks = [m for m in (state.watermark, got.last_end) if m is not None]
    state = replace(state, watermark=max(marks) if marks else None, max_span_s=max(state.max_span_s, got.span))
    writer.write_state(state)
    state = _rolled_up(writer, state)
    return IngestResult(1, got.read, got.written, state.watermark, len(state.awaiting))


def _zone_checked(writer: StoreWriter, state: StoreState) -> StoreState:
    """Rollups sum the ingest's local days: when its time zone is not theirs, readers stop using them
    (days_zone unset) and they go, to be built again by _rolled_up."""
    if state.days_zone is not None and state.days_zone != local_zone():
        state = replace(state, days_zone=None)
        writer.write_state(state)
        writer.drop_rollups()
    return state


def _rolled_up(writer: StoreWriter, state: StoreState) -> StoreState:
    """Every partition's rollups current (built for partitions that lack them: a store from before
    rollups, an ingest that died between a part and its rollups, a new time zone), then days_zone set."""
    writer.roll_up_all(state.watermark)
    state = replace(state, days_zone=local_zone())
    writer.write_state(state)
    return state
