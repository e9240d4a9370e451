"""Reports from the accounting store: the rules of `aggregate.accumulate` (its docstring), written as
DuckDB queries over the store's daily rollups for the whole days of the period (rollup), its rows
for the rest (the period's edges, jobs that ran more than once) and the live tail (allocations not
stored yet: running, pending, ended after the watermark). The two give equal reports
(tests/report/test_store_*.py compare them on the same rows); `accumulate` stays the engine for sacct
lines (--live, --from-file), this one serves the store, where a million rows must answer in a fraction
of a second.

Pure apart from DuckDB reading the files it is given."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import ConfigError
from hpc_aidc.report.aggregate import Acc, Filters, Report, check_dimensions, finish
from hpc_aidc.report.jobs import TOP_JOBS, AccountJobs, JobEnergyRow, rank_key
from hpc_aidc.report.period import TIME_DIMENSIONS, Period, buckets, month_start
from hpc_aidc.report.store.rollup import PART_AGGREGATES, Rollups, midnight
from hpc_aidc.report.store.table import COLUMNS, SQL_TYPES, TailRows, month_of
from hpc_aidc.site_profile import Prices

if TYPE_CHECKING:
    from hpc_aidc.report.store.inputs import Tail
    from hpc_aidc.report.website import SiteData

_USED = ("job_id_raw", "user", "partition", "state", "cpus", "gpus", "nodes", "submit", "eligible", "start", "end",
         "comment_hash", "e_known", "e_gpu_j", "e_cpu_j", "e_util", "e_idle_gpu_s", "e_tokens", "e_samples",
         "e_simulated", "multi_run")
_SUMS = ("gpu_s", "cpu_s", "node_s", "gpu_j", "energy_gpu_s", "cpu_j", "energy_cpu_s", "simulated_gpu_s",
         "util_weighted", "util_gpu_s", "idle_gpu_s", "token_j", "tokens", "sample_j", "samples")

# $1 p0, $2 p1, $3 now; {d0}, {dn}: the whole local days the rollups answer for (d0 = dn = p1: none).
# `head` marks a row whose job count and queue wait this query counts: where it goes is the bucket holding
# its first second in the period (`a`); `parts` are where its usage goes (every bucket it spans). A row of
# the rollups (`edge`) counts here only outside the whole days: its head when its first second (not `a`,
# which a job begun before the period has at p0) is outside them, its usage in the parts outside them.
_ROWS = """
r AS (
  SELECT *, start IS NULL AS never_ran,
         CASE WHEN start IS NULL THEN submit ELSE coalesce("end", greatest($3, start)) END AS stop
  FROM {src}),
p AS (
  SELECT *, CASE WHEN never_ran THEN submit ELSE greatest(start, $1) END AS a,
            CASE WHEN never_ran THEN submit ELSE least(stop, $2) END AS b
  FROM r
  WHERE (never_ran AND submit >= $1 AND submit < $2) OR (NOT never_ran AND start < $2 AND stop >= $1)),
c AS (
  SELECT *, NOT never_ran AND "end" IS NOT NULL AND state <> 'REQUEUED' AND b > a AND e_known AS cand,
         CASE WHEN eligible IS NOT NULL AND eligible <> 0 THEN eligible ELSE submit END AS since,
         NOT edge OR coalesce(start, submit) < {d0} OR coalesce(start, submit) >= {dn} AS head
  FROM p)
"""

# The summaries of a job that ran more than once that do not count (aggregate's rules): a run's own
# part-summary when a later run of the job is among the rows (the newest run holds the totals over all runs:
# rows.newest_runs), and one summary on several runs after its first run that overlaps the period. Only
# multi_run rows can be either, so this runs over those alone and gives their keys (usually none).
_REPEATS = """,
newest AS (SELECT job_id_raw AS raw, max(submit) AS last_submit FROM r GROUP BY job_id_raw)
SELECT hash(job_id_raw, submit, start) FROM (
  SELECT *, row_number() OVER (PARTITION BY job_id_raw, comment_hash, cand ORDER BY submit, start) AS rn
  FROM c JOIN newest ON newest.raw = c.job_id_raw)
WHERE cand AND (rn > 1 OR submit < last_submit)
"""

# A row's seconds inside [x, y) and outside the whole days (all of them for a row not in the rollups).
_SECS = ("CASE WHEN edge THEN greatest(0, least(b, {y}, {d0}) - greatest(a, {x})) + "
         "greatest(0, least(b, {y}) - greatest(a, {x}, {dn})) ELSE least(b, {y}) - greatest(a, {x}) END")

_COUNTED = """,
e AS (
  SELECT *, {counted} AS counted, {secs} AS secs,
         CASE WHEN stop - start > 0 THEN ({secs}) / (stop - start) ELSE 1.0 END AS frac,
         CASE WHEN NOT never_ran AND start >= $1 AND start < $2 AND since IS NOT NULL AND start >= since
              AND head THEN start - since END AS wait
  FROM c)
"""

_HEAD_AGGREGATES = """
  count(*) FILTER (head AND state <> 'REQUEUED') AS jobs,
  count(*) FILTER (head AND state = 'REQUEUED') AS requeues,
  count(*) FILTER (head AND state <> 'REQUEUED' AND NOT never_ran AND "end" IS NULL) AS running,
  histogram(state) FILTER (head AND state <> 'REQUEUED') AS states"""

# Exact queue-wait quantiles (aggregate.quantile's rule: linear between the order statistics of ranks
# floor(p) and floor(p) + 1, p = (n - 1) q) of each group `g` (its keys joined by chr(31); chr(30): the
# total), over two multisets of (wait, n) with each wait's running count `cum` (and `<name>_totals`):
# `base`, what the store gives before the live tail comes (the rollups' waits and those of stored rows of
# jobs that ran once), and `extra`, the few waits of the rows read after it. The k-th of both is the least
# wait w with B(w) + X(w) > k (B, X: how many base, extra waits are <= w). With m extra waits in the
# group, only base waits whose (cum - n, cum] meets (k - m, k] can be it (`near`: a handful a group). For
# an extra wait below all of those, B(w) is 0 when the first near wait is the base's first, else <= k - m
# (so it is not it); for one above them, B(w) is the cum of the last near wait below it (or that wait,
# whose cum is > k, wins). So the base is read once, by a hash join, and the rest is a window over a few
# rows a group.
_CUMULATIVE = """
CREATE TEMP TABLE {name} AS
SELECT g, wait, n, sum(n) OVER (PARTITION BY g ORDER BY wait) AS cum
FROM (SELECT g, wait, n FROM {name}_w UNION ALL SELECT chr(30) AS g, wait, sum(n) AS n FROM {name}_w GROUP BY wait)
"""

_QUANTILES = """
WITH t AS MATERIALIZED (
  SELECT g, sum(bt) AS bt, sum(m) AS m FROM (
    SELECT g, total AS bt, 0 AS m FROM base_totals UNION ALL SELECT g, 0, total FROM extra_totals) GROUP BY g),
r AS MATERIALIZED (SELECT *, bt + m AS total, (bt + m - 1)::DOUBLE * 0.5 AS p5, (bt + m - 1)::DOUBLE * 0.9 AS p9
                   FROM t),
k AS MATERIALIZED (
  SELECT g, m, unnest([0, 1, 2, 3]) AS which,
         unnest([floor(p5), least(floor(p5) + 1, total - 1), floor(p9), least(floor(p9) + 1, total - 1)]) AS k
  FROM r),
near AS (
  SELECT k.g, k.which, k.k, b.wait, b.cum AS cb, b.cum - b.n AS below, NULL::HUGEINT AS cx
  FROM k JOIN base b ON b.g = k.g AND b.cum - b.n <= k.k AND b.cum > k.k - k.m
  UNION ALL
  SELECT k.g, k.which, k.k, x.wait, NULL, NULL, x.cum FROM k JOIN extra x ON x.g = k.g),
c AS (
  SELECT *, max(cb) OVER w AS bcum, max(cx) OVER w AS xcum,
         coalesce(min(below) OVER (PARTITION BY g, which), 0) AS first_below FROM near
  WINDOW w AS (PARTITION BY g, which ORDER BY wait RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
SELECT r.g, any_value(r.p5), any_value(r.p9), list(w ORDER BY which) FROM r JOIN (
  SELECT g, which,
         min(wait) FILTER ((bcum IS NOT NULL OR first_below = 0) AND coalesce(bcum, 0) + coalesce(xcum, 0) > k) AS w
  FROM c GROUP BY ALL) USING (g) GROUP BY r.g
"""

def _cumulative(con: _Store, name: str, keys: str, waits: str, params: list[Any] | None = None) -> None:
    """Tables `name` and `name_totals` (_CUMULATIVE) of the (keys, wait, n) rows of the query `waits`."""
    con.execute(f"CREATE TEMP TABLE {name}_w AS SELECT concat_ws(chr(31), {keys}) AS g, wait, sum(n) AS n "
                f"FROM ({waits}) GROUP BY ALL", params)
    con.execute(_CUMULATIVE.format(name=name))
    con.execute(f"CREATE TEMP TABLE {name}_totals AS SELECT g, max(cum) AS total FROM {name} GROUP BY g")


def _filter_sql(filters: Filters, params: list[Any]) -> str:
    clauses = []
    for column, values in (("account", filters.accounts), ("user", filters.users), ("partition", filters.partitions)):
        if values:
            params.append(sorted(values))
            clauses.append(f'list_contains(${len(params)}, "{column}")')
    return " AND ".join(clauses) or "TRUE"


Quantiles = tuple[float | None, float | None]
GroupSums = tuple[tuple[str, ...], Acc, Quantiles]


class _Store:
    """A DuckDB connection whose errors (a damaged or foreign file in the store) are one-line errors."""

    def __init__(self) -> None:
        try:
            import duckdb
        except ImportError:
            raise ConfigError("Expected the duckdb package to read the site's report store. Got none installed. "
                              "Run `pip install 'hpc-aidc[report]'`, or add --live to read Slurm directly.") from None
        self._error = duckdb.Error
        self.con = duckdb.connect(config={"preserve_insertion_order": False})
        self.con.execute("SET parquet_metadata_cache = true")  # a report scans the same files more than once
        self.load_tail(None)

    def load_tail(self, tail: TailRows | None) -> None:
        """The table `tail`: the live tail's rows, from plain lists (one column per list, zipped by unnest)."""
        columns = [*((name, SQL_TYPES[kind]) for name, kind in COLUMNS), ("account", "VARCHAR")]
        self.load("tail", columns, [tail.columns[name] if tail is not None else [] for name, _ in columns])

    def load(self, name: str, columns: Sequence[tuple[str, str]], values: Sequence[Sequence[object]]) -> None:
        """A temporary table `name` of `columns` ((name, SQL type)) holding `values`, one list per column."""
        select = ", ".join(f'unnest(${i}::{kind}[]) AS "{column}"' for i, (column, kind) in enumerate(columns, 1))
        self.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {select}", [list(v) for v in values])

    def execute(self, sql: str, params: list[Any] | None = None) -> Any:
        try:
            return self.con.execute(sql, params or [])
        except self._error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"Expected a readable report store. Got: {first}. Add --live to read Slurm "
                              "directly, and ask your admins to check the store (docs/report-store.md).") from None

    def close(self) -> None:
        self.con.close()


def _source(files: Sequence[str], tail: TailRows | None, watermark: int | None, filters: Filters,
            params: list[Any], columns: Sequence[str], multi: Sequence[str] = (),
            window: tuple[int, int, int, int] | None = None, edges: Rollups | None = None) -> str:
    """The SQL of the report's rows: the store's files (rows ended from $1 on) and the tail's rows that
    the store does not hold (not ended, or ended after the watermark; every run of the jobs in `multi`,
    which _merge_tail reconciles with their stored runs). Each row gets `stored`: read from the files.

    With `window` (p0, d0, dn, p1): the period and the whole days [d0, dn) inside it that rollups answer
    for. Only the store's rows that can count outside those days are read (jobs that ran more than once,
    began before d0, count in [dn, p1), or never ran and were submitted outside the days), and every row
    gets `edge`: true for rows of the rollups, whose parts inside the days count there. With the rollups'
    `edges` (every row that crossed a midnight or ran more than once), the parts are read only for the
    rows that lie inside one partial day, and only the parts of those days' months."""
    where = _filter_sql(filters, params)
    names = ", ".join(f'"{c}"' for c in columns) + ", account"
    file_names, tail_names = names + ", TRUE AS stored", names + ", FALSE AS stored"
    # (files, conditions, their reader, one scan): parts in a scan per condition (row-group statistics skip
    # most of a part for each, writer.read_order), the few edge rows in one
    scans: list[tuple[Sequence[str], list[str], bool, bool]] = [(files, ["TRUE"], False, False)]
    if window is not None:
        p0, d0, dn, p1 = (int(t) for t in window)
        file_names += ", NOT multi_run AS edge"
        tail_names += ", FALSE AS edge"
        if d0 < dn:
            outside = ["multi_run", f"NOT multi_run AND start < {d0}"]
            if dn < p1:  # usage in [dn, p1) of jobs begun inside the days
                outside.append(f'NOT multi_run AND start >= {d0} AND start < {p1} AND "end" > {dn}')
            if p0 < d0 or dn < p1:  # jobs that never ran, submitted outside the days
                outside.append(f"NOT multi_run AND start IS NULL AND submit >= {p0} AND submit < {p1} AND "
                               f"(submit < {d0} OR submit >= {dn})")
            scans = [(files, outside, False, False)]
            if edges is not None and edges.edges:
                scans = [(edges.edges, outside, edges.whole, True)]
                begun = ('NOT multi_run AND coalesce(start, submit) >= {a} AND coalesce(start, submit) < {b} '
                         'AND "end" < {c}')
                for a, b, c in ((midnight(p0, after=False), d0, d0), (dn, p1, midnight(dn + 1, after=True))):
                    if b > a and a < p1 and b > p0:  # a partial day: its rows that stayed inside it
                        month = f"/month={month_of(a)}/"
                        scans.append(([f for f in files if month in f], [begun.format(a=a, b=b, c=c)], False, False))
    sources = []
    for paths, conditions, whole, one_scan in scans:
        if paths and one_scan:
            params.append(list(paths))
            either = " OR ".join(f"({cond})" for cond in conditions)
            sources.append(f'SELECT {file_names} FROM {_parquet(len(params), whole)} WHERE {where} AND "end" >= $1 AND '
                           f"({either})")
        elif paths:
            params.append(list(paths))
            sources += [f'SELECT {file_names} FROM {_parquet(len(params))} WHERE {where} AND "end" >= $1 AND {cond}'
                        for cond in conditions]
    if tail is not None and tail.num_rows:
        params.append(watermark if watermark is not None else -1)
        params.append(sorted(multi))
        sources.append(f'SELECT {tail_names} FROM tail WHERE {where} AND ("end" IS NULL OR "end" >= $1) AND '
                       f'("end" IS NULL OR "end" > ${len(params) - 1} OR list_contains(${len(params)}, job_id_raw))')
    if not sources:
        sources.append(f'SELECT {tail_names} FROM tail WHERE {where} AND "end" >= $1 AND FALSE')  # binds the params
    return " UNION ALL ".join(sources)


def _merge_tail(con: _Store, table: str, multi: Sequence[str], columns: Sequence[str]) -> None:
    """The rows of `table` (stored and tail rows) as sacct would give every run of the jobs in `multi` (the tail's
    jobs that ran more than once) today: a run the tail holds again replaces its stored row (a finished
    job requeued since), and the stored runs are flagged multi_run. Each run keeps its own summary:
    `sacctmgr modify job` writes only the newest run of a job id (22.05 to 26.05, checked), so a stored run's
    summary is what sacct still shows for it."""
    if not multi:
        return
    jobs = [sorted(multi)]
    con.execute(f"DELETE FROM {table} s WHERE stored AND list_contains($1, job_id_raw) AND EXISTS (SELECT 1 FROM "
                "tail t WHERE t.job_id_raw = s.job_id_raw AND t.submit = s.submit AND t.start IS NOT DISTINCT FROM "
                "s.start)", jobs)
    if "multi_run" in columns:
        con.execute(f"UPDATE {table} SET multi_run = TRUE WHERE stored AND list_contains($1, job_id_raw)", jobs)


def _parquet(param: int, whole: bool = False) -> str:
    """The files of parameter `param`: in the account=/month= tree, or (`whole`) all/ files with an account
    column (layout.ALL)."""
    if whole:
        return f"read_parquet(${param})"
    return (f"read_parquet(${param}, hive_partitioning = true, "
            "hive_types = {'account': VARCHAR, 'month': VARCHAR})")


def whole_days(period: Period, rollups: Rollups | None) -> tuple[int, int]:
    """The local days [d0, dn) inside the period that the rollups answer for; (p1, p1): none."""
    if rollups is None or not rollups.days:
        return period.end, period.end
    d0, dn = midnight(period.start, after=True), midnight(period.end, after=False)
    return (d0, dn) if d0 < dn else (period.end, period.end)


def whole_months(d0: int, dn: int) -> tuple[int, int]:
    """The local months [m0, mn) inside the local days [d0, dn); (dn, dn): none."""
    m0 = month_start(d0)
    if m0 < d0:
        m0 = month_start(m0 + 32 * 86400)
    mn = month_start(dn)
    return (m0, mn) if m0 < mn else (dn, dn)


def query_sums(files: Sequence[str], tail: TailRows | None, watermark: int | None, period: Period,
               dimensions: Sequence[str], filters: Filters | None = None, multi: Sequence[str] = (),
               rollups: Rollups | None = None, later: Callable[[], Tail] | None = None
               ) -> tuple[list[GroupSums], tuple[Acc, Quantiles]]:
    """Per-group sums and queue-wait quantiles (median, p90), and the same for the total.

    With `later` (the tail and its multi-run jobs, once sacct answers), the store is summed while sacct
    works: the rollups, the stored rows of jobs that ran once (the tail cannot change them), and those of
    jobs that ran more than once as if the tail had none of their runs. After it, the tail's rows are
    summed alone, or, when they share a job with those stored runs (whose summary counts once over all
    runs), together with them again."""
    dims = check_dimensions(dimensions)
    time_dim = next((d for d in dims if d in TIME_DIMENSIONS), None)
    con = _Store()
    flt = filters or Filters()
    d0, dn = whole_days(period, rollups)
    key_of = {"account": "account", "user": '"user"', "partition": "partition"}
    day_join = ""
    if time_dim is not None:
        cal = buckets(period, time_dim)
        con.load("buckets", [("label", "VARCHAR"), ("s", "BIGINT"), ("e", "BIGINT")],
                 [cal.labels, cal.starts, cal.ends])
        key_of[time_dim] = "label"
        day_join = "JOIN buckets h ON h.s <= day AND day < h.e"
    keys = ", ".join(key_of[d] for d in dims)
    summed = _Summing(con, period, (d0, dn), keys, time_dim is not None)

    # The store: its rows outside the whole days (the files are read once: each scan opens every file),
    # split into jobs that ran once (final now) and the others; the rollups' sums and waits for the days.
    params: list[Any] = [period.start]  # $1 of _source
    con.execute("CREATE TEMP TABLE src AS " + _source(files, None, watermark, flt, params, _USED,
                                                        window=(period.start, d0, dn, period.end),
                                                        edges=rollups),
                params)
    known = [sorted(multi)]  # without `later`, the tail's multi-run jobs are known now
    con.execute("CREATE TEMP TABLE more AS SELECT * FROM src WHERE multi_run OR list_contains($1, job_id_raw)", known)
    con.execute("CREATE TEMP TABLE once AS SELECT * FROM src WHERE NOT (multi_run OR list_contains($1, job_id_raw))",
                known)
    heads, sums = summed.rows("once", repeats=False)
    waits, wparams = f"SELECT {keys}, wait, 1 AS n FROM once_waits", []
    rolled: list[Any] = []
    if d0 < dn and rollups is not None:
        # the whole months among the days from `months`, the other days from `days` (none with day buckets)
        m0, mn = whole_months(d0, dn) if time_dim in (None, "month") else (dn, dn)
        rparams: list[Any] = []
        rows = []
        if d0 < m0 or mn < dn:
            rparams.append(list(rollups.days))
            rows.append(f"SELECT * FROM {_parquet(len(rparams), rollups.whole)} WHERE day >= {d0} AND day < {dn} "
                        f"AND (day < {m0} OR day >= {mn})")
        if m0 < mn:
            rparams.append(list(rollups.months))
            rows.append(f"SELECT * FROM {_parquet(len(rparams), rollups.whole)} WHERE day >= {m0} AND day < {mn}")
        where = _filter_sql(flt, rparams)
        part_sums = ", ".join(f"sum({name})::DOUBLE AS {name}" for name in _SUMS)
        rolled = con.execute(
            f"SELECT {keys}, sum(h) FILTER (state <> 'REQUEUED'), sum(h) FILTER (state = 'REQUEUED'), 0, "
            "map_from_entries(list((state, h)) FILTER (state <> 'REQUEUED' AND h > 0)), "
            + ", ".join(f"sum({name})" for name in _SUMS) + " FROM ("
            f"SELECT {keys}, state, sum(heads) AS h, {part_sums} FROM ({' UNION ALL BY NAME '.join(rows)}) "
            f"{day_join} WHERE {where} GROUP BY ALL) GROUP BY ALL",
            rparams).fetchall()
        wparams = [list(rollups.waits)]
        waits += (f" UNION ALL SELECT {keys}, wait, n FROM {_parquet(1, rollups.whole)} {day_join} WHERE "
                  f"{_filter_sql(flt, wparams)} AND day >= {d0} AND day < {dn}")
    _cumulative(con, "base", keys, waits, wparams)
    # The stored runs of jobs that ran more than once, as if the tail had none of their jobs (the usual
    # case: then the tail's rows are summed alone; else these are summed again with the tail's).
    more_heads, more_sums = summed.rows("more", repeats=True)

    # The tail: allocations not stored yet.
    if later is not None:
        tail, multi = later()
    con.load_tail(tail)
    if later is not None and multi and _stale_runs(con, files, multi, period.start, rolled=bool(rolled)):
        con.close()  # a stored run summed above belongs to a job the tail shows ran again: start over
        return query_sums(files, tail, watermark, period, dims, flt, multi)
    params = [period.start]
    con.execute("CREATE TEMP TABLE fresh AS " + _source((), tail, watermark, flt, params, _USED, multi,
                                                         window=(period.start, d0, dn, period.end)), params)
    extra = ["more_waits"]
    if con.execute("SELECT count(*) FROM fresh WHERE job_id_raw IN (SELECT job_id_raw FROM more)").fetchall()[0][0]:
        con.execute("INSERT INTO more SELECT * FROM fresh")
        _merge_tail(con, "more", multi, _USED)
        more_heads, more_sums = summed.rows("more", repeats=True)
    else:
        fresh_heads, fresh_sums = summed.rows("fresh", repeats=True)
        more_heads, more_sums, extra = [*more_heads, *fresh_heads], [*more_sums, *fresh_sums], [*extra, "fresh_waits"]
    _cumulative(con, "extra", keys, " UNION ALL ".join(f"SELECT {keys}, wait, 1 AS n FROM {t}" for t in extra))
    quantiles: dict[str, Quantiles] = {}
    for g, p5, p9, (lo5, hi5, lo9, hi9) in con.execute(_QUANTILES).fetchall():
        quantiles[g] = _quantiles((lo5, hi5, p5, lo9, hi9, p9))
    con.close()

    n = len(dims)
    accs: dict[tuple[str, ...], Acc] = {}
    for row in [*heads, *more_heads, *rolled]:
        acc = accs.setdefault(tuple(str(v) for v in row[:n]), Acc())
        acc.jobs += int(row[n] or 0)
        acc.requeues += int(row[n + 1] or 0)
        acc.running += int(row[n + 2] or 0)
        for state, count in (row[n + 3] or {}).items():
            acc.states[str(state)] = acc.states.get(str(state), 0) + int(count)
    for row in [*sums, *more_sums, *((*r[:n], *r[n + 4:]) for r in rolled)]:
        acc = accs.setdefault(tuple(str(v) for v in row[:n]), Acc())
        for name, value in zip(_SUMS, row[n:], strict=True):
            setattr(acc, name, getattr(acc, name) + float(value or 0.0))
    total = Acc()
    for acc in accs.values():
        acc.states = dict(sorted(acc.states.items()))
        total.merge(acc)
    lines = [(key, accs[key], quantiles.get("\x1f".join(key), (None, None))) for key in sorted(accs)]
    return lines, (total, quantiles.get("\x1e", (None, None)))


class _Summing:
    """The report's rules (_ROWS, _COUNTED) over a table of rows: per-group heads and sums, and the waits
    of the rows whose queue wait counts (table `<name>_waits`)."""

    def __init__(self, con: _Store, period: Period, days: tuple[int, int], keys: str, buckets: bool) -> None:
        self.con, self.period, self.keys, self.buckets = con, period, keys, buckets
        self.days = {"d0": days[0], "dn": days[1]}

    def rows(self, table: str, *, repeats: bool) -> tuple[list[Any], list[Any]]:
        con, keys, days = self.con, self.keys, self.days
        params: list[Any] = [self.period.start, self.period.end, self.period.now]
        counted = "cand"
        found = con.execute("WITH " + _ROWS.format(src=f"(SELECT * FROM {table} WHERE multi_run)", **days) + _REPEATS,
                            params).fetchall() if repeats else []
        if found:
            params.append([r[0] for r in found])
            counted = (f"cand AND CASE WHEN multi_run THEN NOT list_contains(${len(params)}, "
                       "hash(job_id_raw, submit, start)) ELSE TRUE END")
        rows = f"{table}_rows"
        con.execute(f"CREATE OR REPLACE TEMP TABLE {rows} AS WITH " + _ROWS.format(src=table, **days)
                    + _COUNTED.format(counted=counted, secs=_SECS.format(x="$1", y="$2", **days)) + "SELECT * FROM e",
                    params)
        head_join = "JOIN buckets h ON h.s <= r.a AND r.a < h.e" if self.buckets else ""
        n = len(keys.split(", "))
        if not self.buckets:  # a row is its own one part
            heads = con.execute(f"SELECT {keys}, {_HEAD_AGGREGATES}, {PART_AGGREGATES} FROM {rows} GROUP BY ALL"
                                ).fetchall()
            sums = [(*r[:n], *r[n + 4:]) for r in heads]
        else:
            heads = con.execute(f"SELECT {keys}, {_HEAD_AGGREGATES} FROM {rows} r {head_join} WHERE head GROUP BY ALL"
                                ).fetchall()
            secs = _SECS.format(x="h.s", y="h.e", **days)
            sums = con.execute(f"SELECT {keys}, {PART_AGGREGATES} FROM (SELECT r.* REPLACE ({secs} AS secs, "
                               f"CASE WHEN stop - start > 0 THEN ({secs}) / (stop - start) ELSE 1.0 END AS frac), "
                               f"h.label FROM {rows} r JOIN buckets h ON h.s < r.b AND h.e > r.a "
                               "WHERE NOT r.never_ran) GROUP BY ALL").fetchall()
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_waits AS SELECT {keys}, wait FROM {rows} r {head_join} "
                    "WHERE wait IS NOT NULL")
        return heads, sums


def _quantiles(row: Sequence[Any]) -> Quantiles:
    """(median, p90) from _QUANTILES' lo5, hi5, p5, lo9, hi9, p9."""
    out = []
    for lo, hi, pos in (row[0:3], row[3:6]):
        out.append(None if lo is None else lo + (hi - lo) * (pos - math.floor(pos)))
    return out[0], out[1]


def _stale_runs(con: _Store, files: Sequence[str], multi: Sequence[str], since: int, *, rolled: bool) -> bool:
    """Whether a stored run of the tail's jobs that ran more than once (`multi`) was summed as a job that ran
    once (in the rollups, or in table `once`): a job requeued after it had finished, stored before. A job
    with a stored multi_run row in table `more` has every stored run so (the ingest reads every run of such a
    job again); for the others, the rows `once` holds, or with rollups their accounts' files (rows ended
    from `since` on), are looked up."""
    jobs = [sorted(multi)]
    if not rolled:
        return bool(con.execute("SELECT count(*) FROM once WHERE list_contains($1, job_id_raw)", jobs).fetchall()[0][0])
    rows = con.execute("SELECT DISTINCT job_id_raw, account FROM tail WHERE list_contains($1, job_id_raw) AND "
                       "job_id_raw NOT IN (SELECT job_id_raw FROM more WHERE multi_run)", jobs).fetchall()
    dirs = {f"/account={r[1]}/" for r in rows}
    own = [f for f in files if any(d in f for d in dirs)]
    if not own:
        return False
    found = con.execute('SELECT count(*) FROM read_parquet($1) WHERE NOT multi_run AND "end" >= $3 AND '
                        "list_contains($2, job_id_raw)", [own, sorted({r[0] for r in rows}), since]).fetchall()
    return bool(found[0][0])


def store_report(files: Sequence[str], tail: TailRows | None, watermark: int | None, period: Period,
                 dimensions: Sequence[str], prices: Prices, filters: Filters | None = None,
                 multi: Sequence[str] = (), rollups: Rollups | None = None,
                 later: Callable[[], Tail] | None = None) -> Report:
    dims = check_dimensions(dimensions)
    lines, (total, total_waits) = query_sums(files, tail, watermark, period, dims, filters, multi, rollups, later)
    return Report(period, dims, tuple(finish(key, acc, prices, q) for key, acc, q in lines),
                  finish(("total",) + ("",) * (len(dims) - 1), total, prices, total_waits), prices.currency)



_JOBS = """
WITH j AS (
  SELECT account, job_id, "user", name, state, gpus, elapsed_s, e_present AND (e_gpu_j IS NOT NULL OR
         e_cpu_j IS NOT NULL) AS has_energy, (coalesce(e_gpu_j, 0) + coalesce(e_cpu_j, 0)) / 3.6e6 AS kwh
  FROM src WHERE start IS NOT NULL AND start < $2 AND ("end" IS NULL OR "end" >= $1)),
ranked AS (
  SELECT *, row_number() OVER (PARTITION BY account ORDER BY kwh DESC, job_id, elapsed_s, state) AS rank
  FROM j WHERE has_energy)
SELECT account, NULL, NULL, NULL, NULL, NULL, NULL, count(*), count(*) FILTER (has_energy) FROM j GROUP BY account
UNION ALL
SELECT account, job_id, "user", name, state, gpus, elapsed_s, kwh, NULL FROM ranked WHERE rank <= $3
"""


def job_stats(files: Sequence[str], tail: TailRows | None, watermark: int | None, period: Period,
              filters: Filters, top: int, multi: Sequence[str] = ()) -> dict[str, AccountJobs]:
    """Per account: allocations that ran in the period, how many have a known energy, and the `top` with
    the most energy (as `site.energy_jobs` picks them from rows)."""
    columns = ("job_id", "job_id_raw", "user", "name", "state", "gpus", "elapsed_s", "submit", "start", "end",
               "e_present", "e_gpu_j", "e_cpu_j")
    params: list[Any] = [period.start]
    con = _Store()
    con.load_tail(tail)
    con.execute("CREATE TEMP TABLE src AS " + _source(files, tail, watermark, filters, params, columns, multi), params)
    _merge_tail(con, "src", multi, columns)
    rows = con.execute(_JOBS, [period.start, period.end, top]).fetchall()
    con.close()
    counts = {r[0]: (int(r[7]), int(r[8])) for r in rows if r[1] is None}
    tops: dict[str, list[JobEnergyRow]] = {}
    for account, job_id, user, name, state, gpus, elapsed, kwh, _ in rows:
        if job_id is not None:
            tops.setdefault(account, []).append(JobEnergyRow(job_id, user, name, state, gpus, elapsed / 3600.0, kwh))
    return {a: AccountJobs(n, k, tuple(sorted(tops.get(a, []), key=rank_key)))
            for a, (n, k) in counts.items()}


def site_data_from_store(files: Sequence[str], tail: TailRows | None, watermark: int | None, period: Period,
                         filters: Filters, prices: Prices, multi: Sequence[str] = (),
                         rollups: Rollups | None = None, later: Callable[[], Tail] | None = None) -> SiteData:
    from hpc_aidc.report.website import SiteData, bucket_dim

    first = store_report(files, tail, watermark, period, ("account",), prices, filters, multi, rollups, later)
    if later is not None:
        tail, multi = later()  # answered by now (cached)

    def report(*dims: str) -> Report:
        return store_report(files, tail, watermark, period, dims, prices, filters, multi, rollups)

    return SiteData(first, report("account", bucket_dim(period)), report("account", "user"),
                    job_stats(files, tail, watermark, period, filters, TOP_JOBS, multi))
