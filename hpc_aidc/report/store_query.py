"""Reports from the accounting store: the rules of `aggregate.accumulate` (its docstring), written as one
DuckDB query over the store's Parquet files plus the live tail (allocations not stored yet: running,
pending, ended after the watermark). The two give equal reports (tests/report/test_store_*.py compare
them on the same rows); `accumulate` stays the engine for sacct lines (--live, --from-file), this one
serves the store, where a million rows must answer in a fraction of a second.

Pure apart from DuckDB reading the files it is given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import ConfigError
from hpc_aidc.report.aggregate import Acc, Filters, Report, check_dimensions, finish
from hpc_aidc.report.jobs import TOP_JOBS, AccountJobs, JobEnergyRow
from hpc_aidc.report.period import TIME_DIMENSIONS, Period, buckets
from hpc_aidc.report.site import SiteData, bucket_dim
from hpc_aidc.report.store_table import arrow_schema
from hpc_aidc.site import Prices

if TYPE_CHECKING:
    import pyarrow as pa

_USED = ("job_id_raw", "user", "partition", "state", "cpus", "gpus", "nodes", "submit", "eligible", "start", "end",
         "comment_hash", "e_known", "e_gpu_j", "e_cpu_j", "e_util", "e_idle_gpu_s", "e_tokens", "e_samples",
         "e_simulated", "multi_run")
_SUMS = ("gpu_s", "cpu_s", "node_s", "gpu_j", "energy_gpu_s", "cpu_j", "energy_cpu_s", "simulated_gpu_s",
         "util_weighted", "util_gpu_s", "idle_gpu_s", "token_j", "tokens", "sample_j", "samples")

# $1 p0, $2 p1, $3 now. `head` is where a row's job count and queue wait go (the bucket holding its first
# second in the period), `parts` where its usage goes (every bucket it spans).
_ROWS = """
r AS (
  SELECT *, start IS NULL AS never_ran,
         CASE WHEN start IS NULL THEN submit ELSE coalesce("end", greatest($3, start)) END AS stop
  FROM src),
p AS (
  SELECT *, CASE WHEN never_ran THEN submit ELSE greatest(start, $1) END AS a,
            CASE WHEN never_ran THEN submit ELSE least(stop, $2) END AS b
  FROM r
  WHERE (never_ran AND submit >= $1 AND submit < $2) OR (NOT never_ran AND start < $2 AND stop >= $1)),
c AS (
  SELECT *, NOT never_ran AND "end" IS NOT NULL AND state <> 'REQUEUED' AND b > a AND e_known AS cand,
         CASE WHEN eligible IS NOT NULL AND eligible <> 0 THEN eligible ELSE submit END AS since
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

_COUNTED = """,
e AS (
  SELECT *, {counted} AS counted, b - a AS secs,
         CASE WHEN stop - start > 0 THEN (b - a) / (stop - start) ELSE 1.0 END AS frac
  FROM c)
"""

_WAIT_QUANTILES = """quantile_cont(CASE WHEN NOT never_ran AND start >= $1 AND start < $2 AND since IS NOT NULL
                                AND start >= since THEN start - since END, [0.5, 0.9])"""

_HEAD_AGGREGATES = """
  count(*) FILTER (state <> 'REQUEUED') AS jobs,
  count(*) FILTER (state = 'REQUEUED') AS requeues,
  count(*) FILTER (state <> 'REQUEUED' AND NOT never_ran AND "end" IS NULL) AS running,
  histogram(state) FILTER (state <> 'REQUEUED') AS states,
  """ + _WAIT_QUANTILES + " AS waits"

_PART_AGGREGATES = """
  sum(gpus * secs)::DOUBLE AS gpu_s, sum(cpus * secs)::DOUBLE AS cpu_s, sum(nodes * secs)::DOUBLE AS node_s,
  sum(e_gpu_j * frac) FILTER (counted) AS gpu_j,
  sum(gpus * secs) FILTER (counted AND e_gpu_j IS NOT NULL)::DOUBLE AS energy_gpu_s,
  sum(e_cpu_j * frac) FILTER (counted) AS cpu_j,
  sum(cpus * secs) FILTER (counted AND e_cpu_j IS NOT NULL)::DOUBLE AS energy_cpu_s,
  sum(gpus * secs) FILTER (counted AND e_simulated)::DOUBLE AS simulated_gpu_s,
  sum(e_util * gpus * secs) FILTER (counted AND e_util IS NOT NULL) AS util_weighted,
  sum(gpus * secs) FILTER (counted AND e_util IS NOT NULL)::DOUBLE AS util_gpu_s,
  sum(e_idle_gpu_s * frac) FILTER (counted) AS idle_gpu_s,
  sum(e_gpu_j * frac) FILTER (counted AND e_tokens <> 0 AND e_gpu_j IS NOT NULL) AS token_j,
  sum(e_tokens * frac) FILTER (counted AND e_tokens <> 0 AND e_gpu_j IS NOT NULL) AS tokens,
  sum(e_gpu_j * frac) FILTER (counted AND e_samples <> 0 AND e_gpu_j IS NOT NULL) AS sample_j,
  sum(e_samples * frac) FILTER (counted AND e_samples <> 0 AND e_gpu_j IS NOT NULL) AS samples
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
        self.con = duckdb.connect()
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
            params: list[Any], columns: Sequence[str], from_tail: Sequence[str] = (), only: str = "TRUE") -> str:
    """The SQL of the report's rows: the store's files (rows ended from $1 on) and the tail's rows that
    the store does not hold (not ended, or ended after the watermark), except the jobs in `from_tail`,
    whose runs all come from the tail; `only`: a further condition on the rows."""
    where = _filter_sql(filters, params) + f" AND {only}"
    names = ", ".join(f'"{c}"' for c in columns) + ", account"
    sources = []
    tail_jobs = "FALSE"
    if from_tail:
        params.append(sorted(from_tail))
        tail_jobs = f"list_contains(${len(params)}, job_id_raw)"
    if files:
        params.append(list(files))
        sources.append(f"SELECT {names} FROM read_parquet(${len(params)}, hive_partitioning = true, "
                       "hive_types = {'account': VARCHAR, 'month': VARCHAR}) "
                       f'WHERE {where} AND "end" >= $1 AND NOT {tail_jobs}')
    if tail is not None and tail.num_rows:
        params.append(watermark if watermark is not None else -1)
        sources.append(f'SELECT {names} FROM tail WHERE {where} AND ("end" IS NULL OR "end" > ${len(params)} '
                       f"OR {tail_jobs})")
    if not sources:
        sources.append(f"SELECT {names} FROM tail")
    return " UNION ALL ".join(sources)


def tail_schema_only() -> pa.Table:
    import pyarrow as pa

    schema = arrow_schema().append(pa.field("account", pa.string()))
    return schema.empty_table()


def query_sums(files: Sequence[str], tail: pa.Table | None, watermark: int | None, period: Period,
               dimensions: Sequence[str], filters: Filters | None = None, from_tail: Sequence[str] = ()
               ) -> tuple[list[GroupSums], tuple[Acc, Quantiles]]:
    """Per-group sums and queue-wait quantiles (median, p90), and the same for the total."""
    dims = check_dimensions(dimensions)
    time_dim = next((d for d in dims if d in TIME_DIMENSIONS), None)
    con = _connect(tail)
    flt = filters or Filters()

    def rows_sql(params: list[Any], only: str = "TRUE") -> str:
        return "WITH src AS (" + _source(files, tail, watermark, flt, params, _USED, from_tail, only) + "),\n" + _ROWS

    params: list[Any] = [period.start, period.end, period.now]
    repeats = [r[0] for r in con.execute(rows_sql(params, "multi_run") + _REPEATS, params).fetchall()]
    params = [period.start, period.end, period.now]
    sql = rows_sql(params)
    counted = "cand"
    if repeats:
        params.append(repeats)
        counted = (f"cand AND CASE WHEN multi_run THEN NOT list_contains(${len(params)}, "
                   "hash(job_id_raw, submit, start)) ELSE TRUE END")
    sql += _COUNTED.format(counted=counted)
    key_of = {"account": "account", "user": '"user"', "partition": "partition"}
    if time_dim is None:
        keys = ", ".join(key_of[d] for d in dims)
        # one pass: a row is its own one part (secs = b - a; 0 for a job that never ran). The total is the
        # groups' sums (below), but for its quantiles: a grouping set would aggregate everything twice.
        rows = con.execute(sql + f"SELECT {keys}, 0 AS g, {_HEAD_AGGREGATES}, {_PART_AGGREGATES} "
                           f"FROM e GROUP BY {keys}", params).fetchall()
        heads = [r[:len(dims) + 6] for r in rows]
        sums = [(*r[:len(dims) + 1], *r[len(dims) + 6:]) for r in rows]
        q = con.execute(sql + f"SELECT {_WAIT_QUANTILES} FROM e", params).fetchone()
        total_quantiles: Quantiles | None = (q[0][0], q[0][1]) if q and q[0] is not None else (None, None)
    else:
        import pyarrow as pa

        cal = buckets(period, time_dim)
        con.register("buckets", pa.table({"label": list(cal.labels), "s": list(cal.starts), "e": list(cal.ends)}))
        key_of[time_dim] = "label"
        keys = ", ".join(key_of[d] for d in dims)
        total_quantiles = None
        con.execute("CREATE TEMP TABLE rows AS " + sql + "SELECT * FROM e", params)
        heads = con.execute(f"SELECT {keys}, GROUPING({keys}) AS g, {_HEAD_AGGREGATES} FROM rows "
                            "JOIN buckets h ON h.s <= rows.a AND rows.a < h.e "
                            f"GROUP BY GROUPING SETS (({keys}), ())", params[:2]).fetchall()
        sums = con.execute(f"SELECT {keys}, GROUPING({keys}) AS g, {_PART_AGGREGATES} FROM ("
                           "SELECT rows.* REPLACE (least(rows.b, h.e) - greatest(rows.a, h.s) AS secs, "
                           "CASE WHEN stop - start > 0 THEN (least(rows.b, h.e) - greatest(rows.a, h.s)) / "
                           "(stop - start) ELSE 1.0 END AS frac), h.label FROM rows JOIN buckets h "
                           "ON h.s < rows.b AND h.e > rows.a WHERE NOT rows.never_ran) "
                           f"GROUP BY GROUPING SETS (({keys}), ())").fetchall()
    con.close()
    n = len(dims)
    accs: dict[tuple[str, ...] | None, Acc] = {}
    waits: dict[tuple[str, ...] | None, Quantiles] = {}
    for row in heads:
        key = None if row[n] else tuple(str(v) for v in row[:n])
        acc = accs.setdefault(key, Acc())
        acc.jobs, acc.requeues, acc.running = row[n + 1], row[n + 2], row[n + 3]
        acc.states = {str(k): int(v) for k, v in (row[n + 4] or {}).items()}
        q = row[n + 5]
        waits[key] = (q[0], q[1]) if q is not None else (None, None)
    for row in sums:
        key = None if row[n] else tuple(str(v) for v in row[:n])
        acc = accs.setdefault(key, Acc())
        for name, value in zip(_SUMS, row[n + 1:], strict=True):
            setattr(acc, name, float(value or 0.0))
    total = accs.pop(None, None)
    if total is None:  # the groups' sums
        total = Acc()
        for acc in accs.values():
            total.merge(acc)
    total_waits = waits.pop(None, (None, None)) if total_quantiles is None else total_quantiles
    lines = [(key, accs[key], waits.get(key, (None, None))) for key in sorted(k for k in accs if k is not None)]
    return lines, (total, total_waits)


def store_report(files: Sequence[str], tail: pa.Table | None, watermark: int | None, period: Period,
                 dimensions: Sequence[str], prices: Prices, filters: Filters | None = None,
                 from_tail: Sequence[str] = ()) -> Report:
    dims = check_dimensions(dimensions)
    lines, (total, total_waits) = query_sums(files, tail, watermark, period, dims, filters, from_tail)
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
                         filters: Filters, prices: Prices, from_tail: Sequence[str] = ()) -> SiteData:
    def report(*dims: str) -> Report:
        return store_report(files, tail, watermark, period, dims, prices, filters, from_tail)

    return SiteData(report("account"), report("account", bucket_dim(period)), report("account", "user"),
                    job_stats(files, tail, watermark, period, filters, TOP_JOBS, from_tail))
