"""Reports from the accounting store: the rules of `aggregate.accumulate` (its docstring), written as
DuckDB queries over the store's daily rollups for the whole days of the period (store_rollup), its rows
for the rest (the period's edges, jobs that ran more than once) and the live tail (allocations not
stored yet: running, pending, ended after the watermark). The two give equal reports
(tests/report/test_store_*.py compare them on the same rows); `accumulate` stays the engine for sacct
lines (--live, --from-file), this one serves the store, where a million rows must answer in a fraction
of a second.

Pure apart from DuckDB reading the files it is given."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import ConfigError
from hpc_aidc.report.aggregate import Acc, Filters, Report, check_dimensions, finish
from hpc_aidc.report.jobs import TOP_JOBS, AccountJobs, JobEnergyRow
from hpc_aidc.report.period import TIME_DIMENSIONS, Period, buckets
from hpc_aidc.report.store_rollup import PART_AGGREGATES, midnight
from hpc_aidc.report.store_table import arrow_schema
from hpc_aidc.site import Prices

if TYPE_CHECKING:
    import pyarrow as pa

    from hpc_aidc.report.site import SiteData
    from hpc_aidc.report.store_source import Tail

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

# One summary on several runs of a job that ran more than once counts once: on the first run that
# overlaps the period. Only multi_run rows can repeat a summary, so this runs over those alone and gives
# the keys of the repeats (usually none).
_REPEATS = """
SELECT hash(job_id_raw, submit, start) FROM (
  SELECT *, row_number() OVER (PARTITION BY job_id_raw, comment_hash, cand ORDER BY submit, start) AS rn FROM c)
WHERE cand AND rn > 1
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

# Exact queue-wait quantiles (aggregate.quantile's rule: linear between the order statistics around
# (n - 1) q) over a multiset given as (wait, n) pairs: the raw rows' waits and the rollups'.
_QUANTILES = """
g AS (SELECT {keys}{comma} wait, sum(n) AS n FROM w GROUP BY ALL),
c AS (SELECT *, sum(n) OVER ({part} ORDER BY wait) AS cum, sum(n) OVER ({part}) AS total FROM g),
q AS (SELECT *, (total - 1)::DOUBLE * 0.5 AS p5, (total - 1)::DOUBLE * 0.9 AS p9 FROM c)
SELECT {keys}{comma}
  min(wait) FILTER (cum > floor(p5)) AS lo5, min(wait) FILTER (cum > least(floor(p5) + 1, total - 1)) AS hi5,
  any_value(p5) AS p5,
  min(wait) FILTER (cum > floor(p9)) AS lo9, min(wait) FILTER (cum > least(floor(p9) + 1, total - 1)) AS hi9,
  any_value(p9) AS p9
FROM q GROUP BY ALL
"""


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

    def __init__(self, tail: pa.Table | None) -> None:
        try:
            import duckdb
        except ImportError:
            raise ConfigError("Expected the duckdb package to read the site's report store. Got none installed. "
                              "Run `pip install 'hpc-aidc[report]'`, or add --live to read Slurm directly.") from None
        self._error = duckdb.Error
        self.con = duckdb.connect(config={"preserve_insertion_order": False})
        self.con.register("tail", tail if tail is not None else tail_schema_only())

    def register(self, name: str, table: pa.Table) -> None:
        self.con.register(name, table)

    def execute(self, sql: str, params: list[Any] | None = None) -> Any:
        try:
            return self.con.execute(sql, params or [])
        except self._error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"Expected a readable report store. Got: {first}. Add --live to read Slurm "
                              "directly, and ask your admins to check the store (docs/report-store.md).") from None

    def close(self) -> None:
        self.con.close()


def _connect(tail: pa.Table | None) -> _Store:
    return _Store(tail)


def _source(files: Sequence[str], tail: pa.Table | None, watermark: int | None, filters: Filters,
            params: list[Any], columns: Sequence[str], from_tail: Sequence[str] = (),
            window: tuple[int, int, int, int] | None = None) -> str:
    """The SQL of the report's rows: the store's files (rows ended from $1 on) and the tail's rows that
    the store does not hold (not ended, or ended after the watermark), except the jobs in `from_tail`,
    whose runs all come from the tail. With `window` (p0, d0, dn, p1): the period and the whole days
    [d0, dn) inside it that rollups answer for, the store's rows that can count outside those days are
    read (jobs that ran more than once, began before d0, or count in [dn, p1)), and every row gets `edge`:
    true for rows of the rollups, whose parts inside the days count there."""
    where = _filter_sql(filters, params)
    names = ", ".join(f'"{c}"' for c in columns) + ", account"
    file_names = tail_names = names
    outside = ["TRUE"]  # the store's rows to read, as conditions row-group statistics can skip on
    if window is not None:
        p0, d0, dn, p1 = (int(t) for t in window)
        file_names += ", NOT multi_run AS edge"
        tail_names += ", FALSE AS edge"
        if d0 < dn:  # each a scan whose row-group statistics skip most of a part (store.read_order)
            outside = ["multi_run", f"NOT multi_run AND start < {d0}"]
            if dn < p1:  # usage in [dn, p1) of jobs begun inside the days
                outside.append(f'NOT multi_run AND start >= {d0} AND start < {p1} AND "end" > {dn}')
            if p0 < d0 or dn < p1:  # jobs that never ran, submitted outside the days
                outside.append(f"NOT multi_run AND start IS NULL AND submit >= {p0} AND submit < {p1} AND "
                               f"(submit < {d0} OR submit >= {dn})")
    tail_jobs = "FALSE"
    if from_tail:
        params.append(sorted(from_tail))
        tail_jobs = f"list_contains(${len(params)}, job_id_raw)"
    sources = []
    if files:
        params.append(list(files))
        files_param = len(params)
        sources += [f"SELECT {file_names} FROM {_parquet(files_param)} "
                    f'WHERE {where} AND "end" >= $1 AND NOT {tail_jobs} AND {cond}' for cond in outside]
    if tail is not None and tail.num_rows:
        params.append(watermark if watermark is not None else -1)
        sources.append(f'SELECT {tail_names} FROM tail WHERE {where} AND ("end" IS NULL OR "end" >= $1) AND '
                       f'("end" IS NULL OR "end" > ${len(params)} OR {tail_jobs})')
    if not sources:
        sources.append(f'SELECT {tail_names} FROM tail WHERE {where} AND "end" >= $1 AND NOT {tail_jobs}')
    return " UNION ALL ".join(sources)


def _parquet(param: int) -> str:
    return (f"read_parquet(${param}, hive_partitioning = true, "
            "hive_types = {'account': VARCHAR, 'month': VARCHAR})")


def tail_schema_only() -> pa.Table:
    import pyarrow as pa

    schema = arrow_schema().append(pa.field("account", pa.string()))
    return schema.empty_table()


@dataclass(frozen=True)
class Rollups:
    """The rollup files (store_rollup) of every partition a report reads."""

    days: tuple[str, ...]
    waits: tuple[str, ...]


def whole_days(period: Period, rollups: Rollups | None) -> tuple[int, int]:
    """The local days [d0, dn) inside the period that the rollups answer for; (p1, p1): none."""
    if rollups is None or not rollups.days:
        return period.end, period.end
    d0, dn = midnight(period.start, after=True), midnight(period.end, after=False)
    return (d0, dn) if d0 < dn else (period.end, period.end)


def query_sums(files: Sequence[str], tail: pa.Table | None, watermark: int | None, period: Period,
               dimensions: Sequence[str], filters: Filters | None = None, from_tail: Sequence[str] = (),
               rollups: Rollups | None = None, later: Callable[[], Tail] | None = None
               ) -> tuple[list[GroupSums], tuple[Acc, Quantiles]]:
    """Per-group sums and queue-wait quantiles (median, p90), and the same for the total. With `later`
    (the tail and its multi-run jobs, once sacct answers) the store is read first, while sacct works."""
    dims = check_dimensions(dimensions)
    time_dim = next((d for d in dims if d in TIME_DIMENSIONS), None)
    con = _connect(None)
    flt = filters or Filters()
    d0, dn = whole_days(period, rollups)
    days = {"d0": d0, "dn": dn}
    key_of = {"account": "account", "user": '"user"', "partition": "partition"}
    head_join = part_join = day_join = ""
    if time_dim is not None:
        import pyarrow as pa

        cal = buckets(period, time_dim)
        con.register("buckets", pa.table({"label": list(cal.labels), "s": list(cal.starts), "e": list(cal.ends)}))
        key_of[time_dim] = "label"
        head_join = "JOIN buckets h ON h.s <= rows.a AND rows.a < h.e"
        part_join = "JOIN buckets h ON h.s < rows.b AND h.e > rows.a"
        day_join = "JOIN buckets h ON h.s <= day AND day < h.e"
    keys = ", ".join(key_of[d] for d in dims)

    # The store: its rows outside the whole days (the files are read once: each scan opens every file),
    # and the rollups' sums and waits for those days.
    params: list[Any] = [period.start]  # $1 of _source
    con.execute("CREATE TEMP TABLE src AS " + _source(files, None, watermark, flt, params, _USED,
                                                        window=(period.start, d0, dn, period.end)), params)
    rolled: list[Any] = []
    if d0 < dn and rollups is not None:
        rparams: list[Any] = [list(rollups.days)]
        where = _filter_sql(flt, rparams) + f" AND day >= {d0} AND day < {dn}"
        rolled = con.execute(
            f"SELECT {keys}, sum(h) FILTER (state <> 'REQUEUED'), sum(h) FILTER (state = 'REQUEUED'), 0, "
            "map_from_entries(list((state, h)) FILTER (state <> 'REQUEUED' AND h > 0)), "
            + ", ".join(f"sum({name})" for name in _SUMS) + " FROM ("
            f"SELECT {keys}, state, sum(heads) AS h, "
            + ", ".join(f"sum({name})::DOUBLE AS {name}" for name in _SUMS)
            + f" FROM {_parquet(1)} {day_join} WHERE {where} GROUP BY ALL) GROUP BY ALL", rparams).fetchall()
        wparams: list[Any] = [list(rollups.waits)]
        con.execute(f"CREATE TEMP TABLE rolled_waits AS SELECT {keys}, wait, sum(n) AS n FROM {_parquet(1)} "
                    f"{day_join} WHERE {_filter_sql(flt, wparams)} AND day >= {d0} AND day < {dn} GROUP BY ALL",
                    wparams)

    # The tail: allocations not stored yet.
    if later is not None:
        tail, from_tail = later()
    con.register("tail", tail if tail is not None else tail_schema_only())
    if rollups is not None and from_tail and _stored_single_runs(con, files, from_tail, watermark):
        con.close()  # their stored rows are in the rollups, but this report takes them from the tail
        return query_sums(files, tail, watermark, period, dims, flt, from_tail)
    if from_tail:
        con.execute("DELETE FROM src WHERE list_contains($1, job_id_raw)", [sorted(from_tail)])
    if tail is not None and tail.num_rows:
        params = [period.start]
        tail_rows = _source((), tail, watermark, flt, params, _USED, from_tail, window=(period.start, d0, dn,
                                                                                        period.end))
        con.execute("INSERT INTO src " + tail_rows, params)

    params = [period.start, period.end, period.now]
    repeats = [r[0] for r in con.execute(
        "WITH " + _ROWS.format(src="(SELECT * FROM src WHERE multi_run)", **days) + _REPEATS, params).fetchall()]
    sql = "WITH " + _ROWS.format(src="src", **days)
    counted = "cand"
    if repeats:
        params.append(repeats)
        counted = (f"cand AND CASE WHEN multi_run THEN NOT list_contains(${len(params)}, "
                   "hash(job_id_raw, submit, start)) ELSE TRUE END")
    sql += _COUNTED.format(counted=counted, secs=_SECS.format(x="$1", y="$2", **days))
    con.execute("CREATE TEMP TABLE rows AS " + sql + "SELECT * FROM e", params)
    if time_dim is None:  # a row is its own one part
        heads = con.execute(f"SELECT {keys}, {_HEAD_AGGREGATES}, {PART_AGGREGATES} FROM rows GROUP BY ALL").fetchall()
        sums = [(*r[:len(dims)], *r[len(dims) + 4:]) for r in heads]
    else:
        heads = con.execute(f"SELECT {keys}, {_HEAD_AGGREGATES} FROM rows {head_join} WHERE head GROUP BY ALL"
                            ).fetchall()
        secs = _SECS.format(x="h.s", y="h.e", **days)
        sums = con.execute(f"SELECT {keys}, {PART_AGGREGATES} FROM (SELECT rows.* REPLACE ({secs} AS secs, "
                           f"CASE WHEN stop - start > 0 THEN ({secs}) / (stop - start) ELSE 1.0 END AS frac), "
                           f"h.label FROM rows {part_join} WHERE NOT rows.never_ran) GROUP BY ALL").fetchall()
    waits_sql = f"SELECT {keys}, wait, 1 AS n FROM rows {head_join} WHERE wait IS NOT NULL"
    if rolled:
        waits_sql += f" UNION ALL SELECT {keys}, wait, n FROM rolled_waits"
    quantiles = {tuple(str(v) for v in r[:len(dims)]): _quantiles(r[len(dims):])
                 for r in con.execute("WITH w AS (" + waits_sql + "),\n" + _QUANTILES.format(
                     keys=keys, comma=",", part=f"PARTITION BY {keys}")).fetchall()}
    total_sql = waits_sql.replace(f"SELECT {keys}, wait", "SELECT wait")
    total_rows = con.execute("WITH w AS (" + total_sql + "),\n" + _QUANTILES.format(keys="", comma="", part="")
                             ).fetchall()
    total_quantiles = _quantiles(total_rows[0]) if total_rows else (None, None)
    con.close()
    n = len(dims)
    accs: dict[tuple[str, ...], Acc] = {}
    for row in [*heads, *rolled]:
        acc = accs.setdefault(tuple(str(v) for v in row[:n]), Acc())
        acc.jobs += int(row[n] or 0)
        acc.requeues += int(row[n + 1] or 0)
        acc.running += int(row[n + 2] or 0)
        for state, count in (row[n + 3] or {}).items():
            acc.states[str(state)] = acc.states.get(str(state), 0) + int(count)
    for row in [*sums, *((*r[:n], *r[n + 4:]) for r in rolled)]:
        acc = accs.setdefault(tuple(str(v) for v in row[:n]), Acc())
        for name, value in zip(_SUMS, row[n:], strict=True):
            setattr(acc, name, getattr(acc, name) + float(value or 0.0))
    total = Acc()
    for acc in accs.values():
        acc.states = dict(sorted(acc.states.items()))
        total.merge(acc)
    lines = [(key, accs[key], quantiles.get(key, (None, None))) for key in sorted(accs)]
    return lines, (total, total_quantiles)


def _quantiles(row: Sequence[Any]) -> Quantiles:
    """(median, p90) from _QUANTILES' lo5, hi5, p5, lo9, hi9, p9."""
    out = []
    for lo, hi, pos in (row[0:3], row[3:6]):
        out.append(None if lo is None else lo + (hi - lo) * (pos - math.floor(pos)))
    return out[0], out[1]


def _stored_single_runs(con: _Store, files: Sequence[str], jobs: Sequence[str], watermark: int | None) -> bool:
    """Whether any of `jobs` has a stored row the rollups hold (a job that ran once when stored). A job with
    a REQUEUED or NODE_FAIL run that ended by the watermark had all its runs stored as multi_run; only the
    others (requeued after they finished, in the last minutes) are looked up in the files."""
    if not files:
        return False
    rows = con.execute("SELECT DISTINCT job_id_raw FROM tail WHERE list_contains($1, job_id_raw) AND job_id_raw NOT "
                       "IN (SELECT job_id_raw FROM tail WHERE \"end\" <= $2 AND state IN ('REQUEUED', 'NODE_FAIL'))",
                       [sorted(jobs), watermark if watermark is not None else -1]).fetchall()
    jobs = [r[0] for r in rows]
    if not jobs:
        return False
    rows = con.execute("SELECT count(*) FROM read_parquet($1) WHERE NOT multi_run AND list_contains($2, job_id_raw)",
                       [list(files), sorted(jobs)]).fetchall()
    return bool(rows[0][0])


def store_report(files: Sequence[str], tail: pa.Table | None, watermark: int | None, period: Period,
                 dimensions: Sequence[str], prices: Prices, filters: Filters | None = None,
                 from_tail: Sequence[str] = (), rollups: Rollups | None = None,
                 later: Callable[[], Tail] | None = None) -> Report:
    dims = check_dimensions(dimensions)
    lines, (total, total_waits) = query_sums(files, tail, watermark, period, dims, filters, from_tail, rollups,
                                             later)
    return Report(period, dims, tuple(finish(key, acc, prices, q) for key, acc, q in lines),
                  finish(("total",) + ("",) * (len(dims) - 1), total, prices, total_waits), prices.currency)



_JOBS = """
, j AS (
  SELECT account, job_id, "user", name, state, gpus, elapsed_s, e_present AND (e_gpu_j IS NOT NULL OR
         e_cpu_j IS NOT NULL) AS has_energy, (coalesce(e_gpu_j, 0) + coalesce(e_cpu_j, 0)) / 3.6e6 AS kwh
  FROM src WHERE start IS NOT NULL AND start < $2 AND ("end" IS NULL OR "end" >= $1)),
ranked AS (
  SELECT *, row_number() OVER (PARTITION BY account ORDER BY kwh DESC, job_id) AS rank FROM j WHERE has_energy)
SELECT account, NULL, NULL, NULL, NULL, NULL, NULL, count(*), count(*) FILTER (has_energy) FROM j GROUP BY account
UNION ALL
SELECT account, job_id, "user", name, state, gpus, elapsed_s, kwh, NULL FROM ranked WHERE rank <= $3
"""


def job_stats(files: Sequence[str], tail: pa.Table | None, watermark: int | None, period: Period,
              filters: Filters, top: int, from_tail: Sequence[str] = ()) -> dict[str, AccountJobs]:
    """Per account: allocations that ran in the period, how many have a known energy, and the `top` with
    the most energy (as `site.energy_jobs` picks them from rows)."""
    params: list[Any] = [period.start, period.end, top]
    con = _connect(tail)
    src = _source(files, tail, watermark, filters, params,
                  ("job_id", "job_id_raw", "user", "name", "state", "gpus", "elapsed_s", "start", "end",
                   "e_present", "e_gpu_j", "e_cpu_j"), from_tail)
    rows = con.execute("WITH src AS (" + src + ")" + _JOBS, params).fetchall()
    con.close()
    counts = {r[0]: (int(r[7]), int(r[8])) for r in rows if r[1] is None}
    tops: dict[str, list[JobEnergyRow]] = {}
    for account, job_id, user, name, state, gpus, elapsed, kwh, _ in rows:
        if job_id is not None:
            tops.setdefault(account, []).append(JobEnergyRow(job_id, user, name, state, gpus, elapsed / 3600.0, kwh))
    return {a: AccountJobs(n, k, tuple(sorted(tops.get(a, []), key=lambda j: (-j.kwh, j.job_id))))
            for a, (n, k) in counts.items()}


def site_data_from_store(files: Sequence[str], tail: pa.Table | None, watermark: int | None, period: Period,
                         filters: Filters, prices: Prices, from_tail: Sequence[str] = (),
                         rollups: Rollups | None = None, later: Callable[[], Tail] | None = None) -> SiteData:
    from hpc_aidc.report.site import SiteData, bucket_dim

    first = store_report(files, tail, watermark, period, ("account",), prices, filters, from_tail, rollups, later)
    if later is not None:
        tail, from_tail = later()  # answered by now (cached)

    def report(*dims: str) -> Report:
        return store_report(files, tail, watermark, period, dims, prices, filters, from_tail, rollups)

    return SiteData(first, report("account", bucket_dim(period)), report("account", "user"),
                    job_stats(files, tail, watermark, period, filters, TOP_JOBS, from_tail))
