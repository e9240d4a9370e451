"""The accounting store without Slurm: reports from the store (files + tail) equal reports from the
same sacct lines, for periods and buckets that cut through jobs; ingest is idempotent, resumes after
an interruption, and counts a late energy summary once; readers never see a row twice."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

import pytest
from report.helpers import at, job, summary

from bench.report_scale.generate import generate
from hpc_aidc.report.aggregate import Filters, Report, build_report
from hpc_aidc.report.ingest import ingest, ingest_file
from hpc_aidc.report.jobs import JobEnergyRow
from hpc_aidc.report.period import Period
from hpc_aidc.report.rows import format_row
from hpc_aidc.report.store.inputs import months_between
from hpc_aidc.report.store.layout import StoreState, live_parts, read_state
from hpc_aidc.report.store.listing import list_store
from hpc_aidc.report.store.query import site_data_from_store, store_report
from hpc_aidc.report.store.rollup import KINDS, Rollups
from hpc_aidc.report.store.table import multi_run_ids, tail_rows, to_table
from hpc_aidc.report.store.writer import StoreWriter
from hpc_aidc.report.website import site_data
from hpc_aidc.site_profile import Prices

PRICES = Prices(gpu_hour=2.0, kwh=0.3)
OCT = (at("2026-10-01T00:00"), at("2026-11-01T00:00"))
MONTHS = months_between(OCT[0] - 40 * 86400, OCT[1] + 40 * 86400)


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return [format_row(r) for r in generate(6000, seed=11)]


def assert_same(a: Report, b: Report) -> None:
    assert [u.key for u in a.lines] == [u.key for u in b.lines]
    for x, y in [*zip(a.lines, b.lines, strict=True), (a.total, b.total)]:
        for name in x.__dataclass_fields__:
            vx, vy = getattr(x, name), getattr(y, name)
            if isinstance(vx, float) and isinstance(vy, float):
                assert vy == pytest.approx(vx, rel=1e-9, abs=1e-9), (x.key, name)
            else:
                assert vx == vy, (x.key, name)


def _rollups(root: Path, months: list[str], *, whole: bool = False) -> Rollups:
    """The rollups a report reads: per account (as a project's member does), or with `whole` those of all/
    (root reading every account)."""
    accounts = None if whole else frozenset(d.name.split("=", 1)[1] for d in (root / "jobs").iterdir())
    rollups = list_store(root, accounts, months).rollups
    assert rollups is not None and rollups.days, "every partition has its rollups"
    assert len(rollups.days) == len(rollups.waits) == len(rollups.edges) == len(rollups.months)
    assert rollups.whole == whole
    return rollups


def _store(tmp_path: Path, lines: Sequence[str], upto: int | None = None) -> tuple[Path, list[str]]:
    """A store holding the finished rows of `lines` that ended by `upto`; returns it and its month files."""
    root = tmp_path / "store"
    writer = StoreWriter(root)
    keep = [ln for ln in lines if upto is None or (_end(ln) is not None and _end(ln) <= upto)]  # type: ignore[operator]
    with writer.locked():
        ingest_file(writer, StoreState(), keep)
        if upto is not None:
            state = read_state(root)
            assert state is not None
            writer.write_state(StoreState(upto, state.max_span_s))
    state = read_state(root)
    assert state is not None and state.watermark is not None
    listing = list_store(root, None, months_between(OCT[0] - 40 * 86400, OCT[1] + 40 * 86400))
    files, denied = list(listing.files), listing.denied
    assert not denied
    return root, files


def _window(lines: Sequence[str], since: int) -> list[str]:
    """The lines of allocations that ended from `since` on or have not ended (sacct's window from then)."""
    return [ln for ln in lines if (end := _end(ln)) is None or end >= since]


def _end(line: str) -> int | None:
    from hpc_aidc.report.rows import parse_rows

    return parse_rows([line])[0].end


PERIODS = [
    Period(*OCT, OCT[1] + 5 * 3600),
    Period(OCT[0] + 3 * 86400 + 5 * 3600, OCT[0] + 9 * 86400 + 77, OCT[1] + 5 * 3600),
    Period(OCT[1] - 86400, OCT[1] + 3600, OCT[1] + 2 * 3600),  # running jobs counted up to now
]


WATERMARK = OCT[0] + 20 * 86400 + 1234  # cuts through jobs: the rest comes from the tail


@pytest.fixture(scope="module")
def cut_store(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> tuple[Path, list[str]]:
    return _store(tmp_path_factory.mktemp("cut"), lines, upto=WATERMARK)


@pytest.mark.parametrize("dims", [("account",), ("account", "day"), ("user", "week"), ("partition", "month"),
                                  ("account", "user")])
@pytest.mark.parametrize("period", PERIODS, ids=["month", "days-cut", "edge-now"])
@pytest.mark.parametrize("rolled", [None, "accounts", "all"], ids=["rows", "rollups", "all-rollups"])
def test_store_plus_tail_equals_sacct(cut_store: tuple[Path, list[str]], lines: list[str], dims: tuple[str, ...],
                                      period: Period, rolled: str | None) -> None:
    watermark = WATERMARK
    root, files = cut_store
    rollups = _rollups(root, MONTHS, whole=rolled == "all") if rolled else None
    window = _window(lines, watermark)  # what the report's sacct call gives: nothing ended before the watermark
    tail, multi = tail_rows(window), tuple(sorted(multi_run_ids(window)))
    assert multi, "jobs that ran more than once cross the watermark"
    if rolled:  # as the CLI calls it: the tail given once sacct answers, after the store is read
        got = store_report(files, None, watermark, period, dims, PRICES, rollups=rollups, later=lambda: (tail, multi))
    else:
        got = store_report(files, tail, watermark, period, dims, PRICES, multi=multi)
    assert_same(build_report(lines, period, dims, PRICES), got)


def test_filters_and_tail_only(tmp_path: Path, lines: list[str]) -> None:
    period = PERIODS[1]
    filters = Filters(frozenset({"proj00", "proj03"}), frozenset(), frozenset({"gpu"}))
    tail = tail_rows(lines)
    assert_same(build_report(lines, period, ("account",), PRICES, filters),
                store_report([], tail, None, period, ("account",), PRICES, filters))
    root, files = _store(tmp_path, lines)
    assert_same(build_report(lines, period, ("user",), PRICES, filters),
                store_report(files, tail, 10**10, period, ("user",), PRICES, filters))
    assert_same(build_report(lines, period, ("user", "day"), PRICES, filters),
                store_report(files, tail, 10**10, period, ("user", "day"), PRICES, filters,
                             rollups=_rollups(root, MONTHS)))


def test_site_data_from_store_equals_lines(tmp_path: Path, lines: list[str]) -> None:
    period = PERIODS[0]
    root, files = _store(tmp_path, lines, upto=OCT[0] + 15 * 86400)
    tail = tail_rows(lines)
    a = site_data(lines, period, Filters(), PRICES)
    b = site_data_from_store(files, None, OCT[0] + 15 * 86400, period, Filters(), PRICES,
                             rollups=_rollups(root, MONTHS, whole=True), later=lambda: (tail, ()))
    for x, y in ((a.by_account, b.by_account), (a.over_time, b.over_time), (a.by_user, b.by_user)):
        assert_same(x, y)
    assert a.jobs.keys() == b.jobs.keys()
    for account, jobs in a.jobs.items():
        other = b.jobs[account]
        assert (jobs.count, jobs.with_energy) == (other.count, other.with_energy)
        assert [j.job_id for j in jobs.top] == [j.job_id for j in other.top]
        assert [j.kwh for j in jobs.top] == pytest.approx([j.kwh for j in other.top])
        def who(top: Sequence[JobEnergyRow]) -> list[tuple[str, str, str, int]]:
            return [(j.user, j.name, j.state, j.gpus) for j in top]

        assert who(jobs.top) == who(other.top)


def _digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def _fetcher(lines: Sequence[str], calls: list[tuple[int, int]], fail_at: int | None = None):  # type: ignore[no-untyped-def]
    from hpc_aidc.report.rows import parse_rows

    rows = list(zip(lines, parse_rows(lines), strict=True))

    def fetch(a: int, b: int) -> list[str]:
        calls.append((a, b))
        if fail_at is not None and len(calls) == fail_at:
            raise OSError("sacct went away")
        # sacct's window: allocations eligible or running at some time in [a, b]
        return [ln for ln, r in rows if (r.start or r.submit or 0) <= b and (r.end is None or r.end >= a)]

    def fetch_jobs(ids: Sequence[str]) -> list[str]:
        return [ln for ln, r in rows if r.job_id_raw in set(ids)]

    return fetch, fetch_jobs


def test_ingest_twice_or_interrupted_changes_nothing(tmp_path: Path, lines: list[str]) -> None:
    now = OCT[1] + 2 * 86400
    one = tmp_path / "one"
    calls: list[tuple[int, int]] = []
    fetch, fetch_jobs = _fetcher(lines, calls)
    with StoreWriter(one).locked() as w:
        first = ingest(w, StoreState(), now=now, start=OCT[0] - 3 * 86400, fetch=fetch, fetch_jobs=fetch_jobs,
                       spooled=set)
    assert first.rows_written > 0 and first.windows > 30
    snapshot = _digest(one)
    with StoreWriter(one).locked() as w:  # again: the overlap is re-read, nothing changes
        state = read_state(one)
        assert state is not None
        again = ingest(w, state, now=now + 600, start=0, fetch=fetch, fetch_jobs=fetch_jobs, spooled=set,
                       overlap_s=40 * 86400, window_s=7 * 86400)
    assert again.rows_written == 0 and again.rows_read > 0
    assert _digest(one) == snapshot

    two = tmp_path / "two"
    calls2: list[tuple[int, int]] = []
    failing, fetch_jobs = _fetcher(lines, calls2, fail_at=7)
    with pytest.raises(OSError), StoreWriter(two).locked() as w:
        ingest(w, StoreState(), now=now, start=OCT[0] - 3 * 86400, fetch=failing, fetch_jobs=fetch_jobs, spooled=set)
    state = read_state(two)
    assert state is not None and state.watermark == calls2[5][1]  # six windows done, then the failure
    with StoreWriter(two).locked() as w:
        ingest(w, state, now=now, start=0, fetch=fetch, fetch_jobs=fetch_jobs, spooled=set)
    period = PERIODS[0]
    wm = read_state(one).watermark  # type: ignore[union-attr]
    months = months_between(OCT[0] - 86400 * 40, now)
    a = store_report(list(list_store(one, None, months).files), None, wm, period, ("account",), PRICES,
                     rollups=_rollups(one, months))
    b = store_report(list(list_store(two, None, months).files), None, wm, period, ("account",), PRICES,
                     rollups=_rollups(two, months))
    assert_same(a, b)
    finished = [ln for ln in lines if _end(ln) is not None and _end(ln) <= wm]  # type: ignore[operator]
    assert_same(build_report(finished, period, ("account",), PRICES), a)


def test_late_energy_counted_once(tmp_path: Path) -> None:
    """A job stored before its summary arrived (spooled while slurmdbd was away): the next ingest reads
    it again, replaces the row, and the report counts its energy once."""
    bare = job("501", start="2026-10-05T10:00", end="2026-10-05T12:00")
    other = job("502", start="2026-10-05T10:00", end="2026-10-05T11:00", comment=summary(3.6e6))
    late = job("501", start="2026-10-05T10:00", end="2026-10-05T12:00", comment=summary(7.2e6))
    current = [bare, other]
    spool = {"501"}

    def fetch(a: int, b: int) -> list[str]:
        return list(current)

    def fetch_jobs(ids: Sequence[str]) -> list[str]:
        return [ln for ln in current if ln.split("\x1f")[1] in set(ids)]

    root = tmp_path / "s"
    now = at("2026-10-06T00:00")
    with StoreWriter(root).locked() as w:
        first = ingest(w, StoreState(), now=now, start=at("2026-10-05T00:00"), fetch=fetch, fetch_jobs=fetch_jobs,
                       spooled=lambda: set(spool))
    assert first.awaiting == 1
    current[0] = late  # the backfill stored the summary and emptied the spool
    spool.clear()
    with StoreWriter(root).locked() as w:
        state = read_state(root)
        assert state is not None
        second = ingest(w, state, now=now + 60, start=0, fetch=fetch, fetch_jobs=fetch_jobs, spooled=lambda: set(spool))
    assert second.awaiting == 0 and second.rows_written == 1
    files = list(list_store(root, None, ["2026-10"]).files)
    period = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), now)
    report = store_report(files, None, state.watermark, period, ("account",), PRICES,
                          rollups=_rollups(root, ["2026-10"]))
    assert report.total.energy_kwh == pytest.approx(3.0)
    assert report.total.jobs == 2
    assert_same(build_report([late, other], period, ("account",), PRICES), report)


def test_readers_skip_superseded_parts() -> None:
    names = ["part-00000001-00000004.parquet", "part-00000005-00000005.parquet", "part-00000005-00000006.parquet",
             "part-00000001-00000001.parquet", "notes.txt"]
    assert live_parts(names) == ["part-00000001-00000004.parquet", "part-00000005-00000006.parquet"]


def test_many_ingests_keep_partitions_small(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for i in range(30):
        line = job(str(1000 + i), start="2026-10-05T10:00", end=f"2026-10-05T10:{10 + i:02d}", comment=summary(1e6))
        with StoreWriter(root).locked() as w:
            ingest_file(w, read_state(root) or StoreState(), [line])
    files = list(list_store(root, None, ["2026-10"]).files)
    assert 1 <= len(files) <= 8
    period = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), at("2026-10-06T00:00"))
    assert store_report(files, None, None, period, ("account",), PRICES).total.jobs == 30
    rolled = store_report(files, None, None, period, ("account",), PRICES, rollups=_rollups(root, ["2026-10"]))
    assert rolled.total.jobs == 30 and rolled.total.energy_kwh == pytest.approx(30 / 3.6)
    # once the watermark is a day past October, no row can join it: its parts become one file
    with StoreWriter(root).locked() as w:
        later = job("2000", start="2026-11-03T10:00", end="2026-11-03T11:00")
        ingest_file(w, read_state(root) or StoreState(), [later])
    merged = list(list_store(root, None, ["2026-10"]).files)
    assert len(merged) == 1 and len(files) > 1
    assert_same(rolled, store_report(merged, None, None, period, ("account",), PRICES,
                                     rollups=_rollups(root, ["2026-10"])))


@pytest.mark.parametrize("readers", ["", "{account}"], ids=["roots-alone", "readers-group"])
def test_store_files_belong_to_root_and_the_sites_readers_group(tmp_path: Path, readers: str) -> None:
    """An account's partitions: root's alone by default (a project's members must not read every member's
    jobs); the site's readers group where it names one. Nobody lists which accounts the store holds."""
    if os.geteuid() != 0:
        pytest.skip("sets group ownership as root")
    import grp

    root = tmp_path / "s"
    with StoreWriter(root, readers).locked() as w:
        ingest_file(w, StoreState(), [job("77", start="2026-10-05T10:00", end="2026-10-05T11:00", account="physics")])
    part = next(root.rglob("*.parquet"))
    known = {g.gr_name for g in grp.getgrall()}
    want = grp.getgrnam("physics").gr_gid if readers and "physics" in known else 0
    for path in (part, part.parent, part.parent.parent):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (0, want)
        assert st.st_mode & 0o007 == 0
    assert (root / "jobs").stat().st_mode & 0o777 == 0o711


@pytest.mark.parametrize("in_tail", [(2,), (1, 2)], ids=["window", "every-run"])
@pytest.mark.parametrize("first_end", ["NODE_FAIL", "FAILED"])
def test_a_stored_run_keeps_its_summary_and_the_final_one_counts(tmp_path: Path, in_tail: tuple[int, ...],
                                                                 first_end: str) -> None:
    """Run 1 ended (on a node failure, or failed and was requeued by hand) and was stored with its own
    summary; run 2 ended after the watermark with the job's final summary (runs=2, the totals over both
    runs), which `sacctmgr modify job` writes onto run 2 only. The report's sacct call gives run 2 (and
    run 1 again where its window reaches back): run 1 keeps its own summary, as sacct shows it, and only the
    final one counts, from the store as from sacct's lines, with no second sacct call."""
    run1 = job("900", start="2026-10-05T10:00", end="2026-10-05T11:00", state=first_end, comment=summary(3.6e6))
    final = summary(9 * 3.6e6, runs=2)
    run2 = job("900", start="2026-10-05T12:00", end="2026-10-05T14:00", submit="2026-10-05T11:00", comment=final)
    run1_old = run1
    root = tmp_path / "s"
    with StoreWriter(root).locked() as w:
        ingest_file(w, StoreState(), [run1_old])
    files = list(list_store(root, None, ["2026-10"]).files)
    watermark = at("2026-10-05T11:30")
    period = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), at("2026-10-06T00:00"))
    tail_lines = [{1: run1, 2: run2}[i] for i in in_tail]
    multi = tuple(multi_run_ids(tail_lines))
    assert multi == ("900",)
    for rollups in (None, _rollups(root, ["2026-10"]), _rollups(root, ["2026-10"], whole=True)):
        report = store_report(files, None, watermark, period, ("account",), PRICES, rollups=rollups,
                              later=lambda: (tail_rows(tail_lines), multi))
        assert_same(build_report([run1, run2], period, ("account",), PRICES), report)
        assert report.total.energy_kwh == pytest.approx(9.0)
    data = site_data_from_store(files, tail_rows(tail_lines), watermark, period, Filters(), PRICES, multi)
    assert data.jobs == site_data([run1, run2], period, Filters(), PRICES).jobs


def test_a_damaged_or_old_store_is_one_clean_error(tmp_path: Path) -> None:
    from hpc_aidc.errors import ConfigError

    root, files = _store(tmp_path, [job("1", start="2026-10-05T10:00", end="2026-10-05T11:00")])
    Path(files[0]).write_bytes(b"not parquet")
    period = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), at("2026-10-06T00:00"))
    with pytest.raises(ConfigError, match=r"Expected a readable report store.*--live"):
        store_report(files, None, None, period, ("account",), PRICES)
    (root / "state.json").write_text('{"watermark": 1, "schema": 1}')
    with pytest.raises(ConfigError, match=r"Expected report store schema 2.*--live"):
        read_state(root)


def test_rollups_cover_exactly_the_parts_or_are_not_used(tmp_path: Path) -> None:
    """Rollups name the last part generation they sum: a reader never mixes them with newer parts (an
    ingest that died between the two, or a store from before rollups); the next ingest builds them."""
    root = tmp_path / "s"
    with StoreWriter(root).locked() as w:
        ingest_file(w, StoreState(), [job("1", start="2026-10-05T10:00", end="2026-10-05T11:00")])
    assert list_store(root, None, ["2026-10"]).rollups is not None
    rollups = next((root / "rollups").rglob("days-*.parquet"))
    rollups.rename(rollups.with_name("days-00000000.parquet"))  # older than the part
    assert list_store(root, None, ["2026-10"]).rollups is None
    with StoreWriter(root).locked() as w:
        ingest_file(w, read_state(root) or StoreState(), [])  # no rows: only the rollups
    rolled = list_store(root, None, ["2026-10"]).rollups
    assert rolled is not None and len(rolled.days) == 1
    next((root / "rollups").rglob("edges-*.parquet")).unlink()  # a store rolled up before edges existed
    assert list_store(root, None, ["2026-10"]).rollups is None
    with StoreWriter(root).locked() as w:
        ingest_file(w, read_state(root) or StoreState(), [])
    assert list_store(root, None, ["2026-10"]).rollups is not None
    assert not list((root / "jobs").rglob("days-*"))  # the rows' tree holds rows only: one schema for other engines


def test_a_new_time_zone_rebuilds_the_rollups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    line = job("1", start="2026-10-05T10:00", end="2026-10-05T11:00")
    with StoreWriter(root).locked() as w:
        ingest_file(w, StoreState(), [line])
    state = read_state(root)
    assert state is not None and state.days_zone is not None
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30: other day boundaries
    time.tzset()
    try:
        with StoreWriter(root).locked() as w:
            ingest_file(w, state, [])
    finally:
        monkeypatch.undo()
        time.tzset()
    state = read_state(root)
    assert state is not None and state.days_zone == "Asia/Kolkata"
    rollups = list_store(root, None, ["2026-10"]).rollups
    assert rollups is not None
    days = rollups.days
    from datetime import datetime

    import pyarrow.parquet as pq

    kolkata_midnight = int(datetime(2026, 10, 4, 18, 30, tzinfo=UTC).timestamp())
    assert pq.read_table(days[0])["day"].to_pylist() == [kolkata_midnight]  # rebuilt, not kept


@pytest.mark.parametrize("in_tail", [(2,), (1, 2)], ids=["window", "every-run"])
def test_a_finished_job_requeued_after_it_was_stored_is_counted_once(tmp_path: Path, in_tail: tuple[int, ...]
                                                                      ) -> None:
    """Stored as a job that ran once (so in the rollups); then requeued after it had finished: the rollups
    must not count the stored run with its own summary too (the report reads rows instead), since the
    final summary on run 2 holds both runs."""
    run1_old = job("950", start="2026-10-05T10:00", end="2026-10-05T11:00", comment=summary(3.6e6))
    final = summary(2 * 3.6e6, runs=2)
    run1 = run1_old  # sacct still shows run 1's own summary: sacctmgr writes the newest run only
    run2 = job("950", start="2026-10-05T12:00", end="2026-10-05T14:00", submit="2026-10-05T11:30", comment=final)
    other = job("951", start="2026-10-05T09:00", end="2026-10-05T10:00", comment=summary(3.6e6))
    root = tmp_path / "s"
    with StoreWriter(root).locked() as w:
        ingest_file(w, StoreState(), [run1_old, other])
    files = list(list_store(root, None, ["2026-10"]).files)
    period = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), at("2026-10-06T00:00"))
    tail_lines = [{1: run1, 2: run2}[i] for i in in_tail]
    tail, multi = tail_rows(tail_lines), tuple(multi_run_ids(tail_lines))
    report = store_report(files, None, at("2026-10-05T11:10"), period, ("account",), PRICES,
                          rollups=_rollups(root, ["2026-10"], whole=True), later=lambda: (tail, multi))
    assert_same(build_report([run1, run2, other], period, ("account",), PRICES), report)
    assert report.total.jobs == 3 and report.total.energy_kwh == pytest.approx(3.0)


@pytest.mark.parametrize("seed", range(16))
def test_queue_wait_quantiles_of_two_multisets_are_exact(seed: int) -> None:
    """The store's quantile query over waits summed before the tail (`base`) and after it (`extra`) gives
    aggregate.quantile of all of them, per group and in total: groups with no extra waits, only extra waits,
    extra waits below, inside and above the base's, ties."""
    import random

    from hpc_aidc.report.aggregate import quantile
    from hpc_aidc.report.store.query import _QUANTILES, _cumulative, _quantiles, _Store

    rng = random.Random(seed)
    base = [(rng.choice("ab"), rng.randint(0, 60)) for _ in range(rng.choice([1, 2, 3, 50, 400]))]
    extra = [(rng.choice("abc"), rng.randint(-5, 70)) for _ in range(rng.choice([0, 1, 2, 9, 300]))]
    con = _Store()
    for name, pairs in (("base_in", base), ("extra_in", extra)):
        con.load(name, [("account", "VARCHAR"), ("wait", "BIGINT")], [[a for a, _ in pairs], [w for _, w in pairs]])
    _cumulative(con, "base", "account", "SELECT *, 1 AS n FROM base_in")
    _cumulative(con, "extra", "account", "SELECT *, 1 AS n FROM extra_in")
    got = {g: _quantiles((w[0], w[1], p5, w[2], w[3], p9)) for g, p5, p9, w in con.execute(_QUANTILES).fetchall()}
    con.close()
    want = {}
    for g in {a for a, _ in base + extra} | {"\x1e"}:
        waits = sorted(w for a, w in base + extra if g in ("\x1e", a))
        want[g] = (quantile(waits, 0.5), quantile(waits, 0.9))
    assert got.keys() == want.keys()
    for g, (median, p90) in want.items():
        assert got[g] == (pytest.approx(median), pytest.approx(p90)), g


def test_all_accounts_rollups_are_roots_and_used_only_when_current(tmp_path: Path) -> None:
    """all/ holds every account's rollups of a month in one file of each kind, for root alone; a report
    over every account reads them only while they sum exactly the partitions' current parts."""
    root = tmp_path / "s"
    rows = [job("1", start="2026-10-05T10:00", end="2026-10-05T11:00", account="physics"),
            job("2", start="2026-10-06T10:00", end="2026-10-07T11:00", account="climate")]
    with StoreWriter(root).locked() as w:
        ingest_file(w, StoreState(), rows)
    listing = list_store(root, None, ["2026-10"])
    assert listing.rollups is not None and listing.rollups.whole and len(listing.rollups.days) == 1
    for path in (root / "all", root / "all" / "month=2026-10", Path(listing.rollups.days[0])):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (0, 0) and st.st_mode & 0o027 == 0, path
    period = Period(at("2026-10-01T00:00"), at("2026-11-01T00:00"), at("2026-11-01T00:00"))
    files = list(listing.files)
    whole = store_report(files, None, None, period, ("account",), PRICES, rollups=listing.rollups)
    assert_same(build_report(rows, period, ("account",), PRICES), whole)
    # a new part in one partition: all/ no longer sums it, the accounts' own rollups serve until rebuilt
    with StoreWriter(root).locked() as w:
        w.upsert("physics", "2026-10", to_table([job("3", start="2026-10-08T10:00", end="2026-10-08T11:00")]
                                                ).drop_columns(["account"]))
    stale = list_store(root, None, ["2026-10"])
    assert stale.rollups is None  # the physics partition's own rollups are stale too: rows
    with StoreWriter(root).locked() as w:
        w.roll_up_all()
    fresh = list_store(root, None, ["2026-10"])
    assert fresh.rollups is not None and fresh.rollups.whole and fresh.rollups.days != listing.rollups.days
    assert len(list((root / "all" / "month=2026-10").iterdir())) == len(KINDS)  # the old ones are gone
