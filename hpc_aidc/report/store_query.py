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
         "e_simulated")
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
  SELECT *, NOT never_ran AND "end" IS NOT NULL AND state <> 'REQUEUED' AND b > a AND e_known AS cand FROM p),
e AS (
  -- one summary on two runs of a requeued job counts once: on the first run that overlaps the period
  SELECT *, cand AND row_number() OVER (PARTITION BY job_id_raw, comment_hash, cand ORDER BY submit, start) = 1
            AS counted,
         CASE WHEN eligible IS NOT NULL AND eligible <> 0 THEN eligible ELSE submit END AS since
  FROM c)
"""

_HEAD = """
SELECT {keys}, GROUPING({keys}) AS g,
  count(*) FILTER (state <> 'REQUEUED') AS jobs,
  count(*) FILTER (state = 'REQUEUED') AS requeues,
  count(*) FILTER (state <> 'REQUEUED' AND NOT never_ran AND "end" IS NULL) AS running,
  histogram(state) FILTER (state <> 'REQUEUED') AS states,
  quantile_cont(CASE WHEN NOT never_ran AND start >= $1 AND start < $2 AND since IS NOT NULL AND start >= since
                     THEN start - since END, [0.5, 0.9]) AS waits
FROM {head} GROUP BY GROUPING SETS (({keys}), ())
"""

_PARTS = """
SELECT {keys}, GROUPING({keys}) AS g,
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
FROM (SELECT *, CASE WHEN stop - start > 0 THEN secs / (stop - start) ELSE 1.0 END AS frac FROM {parts})
GROUP BY GROUPING SETS (({keys}), ())
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


def _source(files: Sequence[str], tail: pa.Table | None, watermark: int | None, filters: Filters,
            params: list[Any], columns: Sequence[str]) -> tuple[Any, str]:
    """A DuckDB connection and the SQL of the report's rows: the store's files (rows ended from $1 on)
    and the tail's rows that the store does not hold (not ended, or ended after the watermark)."""
    try:
        import duckdb
    except ImportError:
        raise ConfigError("Expected the duckdb package to read the site's report store. Got none installed. "
                          "Run `pip install 'hpc-aidc[report]'`, or add --live to read Slurm directly.") from None
    con = duckdb.connect()
    where = _filter_sql(filters, params)
    names = ", ".join(f'"{c}"' for c in columns) + ", account"
    sources = []
    if files:
        params.append(list(files))
        sources.append(f"SELECT {names} FROM read_parquet(${len(params)}, hive_partitioning = true, "
                       "hive_types = {'account': VARCHAR, 'month': VARCHAR}) "
                       f'WHERE {where} AND "end" >= $1')
    if tail is not None and tail.num_rows:
        con.register("tail", tail)
        params.append(watermark if watermark is not None else -1)
        sources.append(f'SELECT {names} FROM tail WHERE {where} AND ("end" IS NULL OR "end" > ${len(params)})')
    if not sources:
        con.register("tail", tail_schema_only())
        sources.append(f"SELECT {names} FROM tail")
    return con, " UNION ALL ".join(sources)


def tail_schema_only() -> pa.Table:
    import pyarrow as pa

    schema = arrow_schema().append(pa.field("account", pa.string()))
    return schema.empty_table()


def query_sums(files: Sequence[str], tail: pa.Table | None, watermark: int | None, period: Period,
               dimensions: Sequence[str], filters: Filters | None = None
               ) -> tuple[list[GroupSums], tuple[Acc, Quantiles]]:
    """Per-group sums and queue-wait quantiles (median, p90), and the same for the total."""
    dims = check_dimensions(dimensions)
    time_dim = next((d for d in dims if d in TIME_DIMENSIONS), None)
    params: list[Any] = [period.start, period.end, period.now]
    con, src = _source(files, tail, watermark, filters or Filters(), params, _USED)
    sql = "WITH src AS (" + src + "),\n" + _ROWS
    key_of = {"account": "account", "user": '"user"', "partition": "partition"}
    if time_dim is not None:
        cal = buckets(period, time_dim)
        import pyarrow as pa

        con.register("buckets", pa.table({"label": list(cal.labels), "s": list(cal.starts), "e": list(cal.ends)}))
        key_of[time_dim] = "label"
        head = "e JOIN buckets h ON h.s <= e.a AND e.a < h.e"
        parts = ("(SELECT e.*, h.label, least(e.b, h.e) - greatest(e.a, h.s) AS secs FROM e JOIN buckets h "
                 "ON h.s < e.b AND h.e > e.a WHERE NOT e.never_ran)")
    else:
        head = "e"
        parts = "(SELECT *, b - a AS secs FROM e WHERE NOT never_ran)"
    keys = ", ".join(key_of[d] for d in dims)
    heads = con.execute(sql + _HEAD.format(keys=keys, head=head), params).fetchall()
    sums = con.execute(sql + _PARTS.format(keys=keys, parts=parts), params).fetchall()
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
    total = accs.pop(None, Acc())
    total_waits = waits.pop(None, (None, None))
    lines = [(key, accs[key], waits.get(key, (None, None))) for key in sorted(k for k in accs if k is not None)]
    return lines, (total, total_waits)


def store_report(files: Sequence[str], tail: pa.Table | None, watermark: int | None, period: Period,
                 dimensions: Sequence[str], prices: Prices, filters: Filters | None = None) -> Report:
    dims = check_dimensions(dimensions)
    lines, (total, total_waits) = query_sums(files, tail, watermark, period, dims, filters)
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
              filters: Filters, top: int) -> dict[str, AccountJobs]:
    """Per account: allocations that ran in the period, how many have a known energy, and the `top` with
    the most energy (as `site.energy_jobs` picks them from rows)."""
    params: list[Any] = [period.start, period.end, top]
    con, src = _source(files, tail, watermark, filters, params,
                       ("job_id", "user", "name", "state", "gpus", "elapsed_s", "start", "end", "e_present",
                        "e_gpu_j", "e_cpu_j"))
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
                         filters: Filters, prices: Prices) -> SiteData:
    def report(*dims: str) -> Report:
        return store_report(files, tail, watermark, period, dims, prices, filters)

    return SiteData(report("account"), report("account", bucket_dim(period)), report("account", "user"),
                    job_stats(files, tail, watermark, period, filters, TOP_JOBS))
