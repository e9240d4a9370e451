"""Daily rollups of a store partition, so a report over whole days reads a few thousand sums instead of a
million rows (sreport's answer too; slurmdbd rolls up hourly).

Each partition (account, month) gets three tables next to its parts, built from all of them whenever the
ingest changes the partition:

- days:  per user, partition, state and local day, the jobs whose head falls in that day (their first
  second: start, or submit for jobs that never ran) and the sums of every job's part inside that day (the
  report's pro-rating, PART_AGGREGATES, day by day);
- waits: per user, partition and local day, how many jobs that started that day waited each number of
  seconds (exact, so quantiles over any set of days are exact);
- months: the days' sums per local month (the month's first midnight in `day`), so a report over whole
  months reads one row where days has thirty;
- edges: the rows a report over whole days may still need (its rollups cannot place their heads, nor
  count their summaries once): jobs that ran more than once, and jobs that crossed a local midnight
  (from start, or submit for jobs that never ran, to end). A few percent of the rows: with these, a
  report reads parts only for the partial days at its ends, and only their months' parts.

Rows of jobs that ran more than once (multi_run) are left out: their summary may sit on several runs and
counts once per report, so reports always read them raw. A report uses the rollups of the whole local
days inside its period and the raw rows for the rest (query); a partition's rollups name the last
part generation they cover, and a reader that finds them older than the parts reads raw rows instead."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from hpc_aidc.report.period import month_start

if TYPE_CHECKING:
    import pyarrow as pa

DAYS = "days"
WAITS = "waits"
EDGES = "edges"
MONTHS = "months"
KINDS = (DAYS, WAITS, EDGES, MONTHS)


@dataclass(frozen=True)
class Rollups:
    """The rollup files of every partition a report reads, one of each kind a partition; or with `whole`,
    one of each kind a month for every account (layout.ALL: an `account` column, no account= directory)."""

    days: tuple[str, ...]
    waits: tuple[str, ...]
    edges: tuple[str, ...]
    months: tuple[str, ...]
    whole: bool = False

# The sums of jobs' parts (a report's usage, energy and what it covers), over rows with `secs` inside a
# bucket, `frac` = secs / the job's time, `counted`: its energy counts. Reports (query) and rollups
# use this one definition.
PART_AGGREGATES = """
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

# A job's part in a local day g: the overlap of [start, end) with [g.s, g.e), summed by PART_AGGREGATES.
_BUILD = """
WITH r AS (
  SELECT account, "user", partition, state, cpus, gpus, nodes, submit, start, "end", e_known, e_gpu_j, e_cpu_j,
         e_util, e_idle_gpu_s, e_tokens, e_samples, e_simulated,
         CASE WHEN eligible IS NOT NULL AND eligible <> 0 THEN eligible ELSE submit END AS since
  FROM {parts} WHERE NOT multi_run),
heads AS (
  SELECT account, "user", partition, state, g.s AS day, count(*) AS heads
  FROM r JOIN grid g ON g.s <= coalesce(r.start, r.submit) AND coalesce(r.start, r.submit) < g.e
  GROUP BY ALL),
pieces AS (
  SELECT r.*, g.s AS day, (least(r."end", g.e) - greatest(r.start, g.s))::DOUBLE AS secs
  FROM r JOIN grid g ON g.s < r."end" AND g.e > r.start WHERE r.start IS NOT NULL),
q AS (
  SELECT *, state <> 'REQUEUED' AND e_known AND secs > 0 AS counted,
         CASE WHEN "end" - start > 0 THEN secs / ("end" - start) ELSE 1.0 END AS frac
  FROM pieces),
parts AS (
  SELECT account, "user", partition, state, day, {sums}
  FROM q GROUP BY ALL)
SELECT account, "user", partition, state, day, coalesce(heads, 0) AS heads,
       parts.* EXCLUDE (account, "user", partition, state, day)
FROM heads FULL OUTER JOIN parts USING (account, "user", partition, state, day)
ORDER BY account, day, "user", partition, state
"""

_WAITS = """
WITH r AS (
  SELECT account, "user", partition, start,
         start - CASE WHEN eligible IS NOT NULL AND eligible <> 0 THEN eligible ELSE submit END AS wait
  FROM {parts} WHERE NOT multi_run AND start IS NOT NULL)
SELECT account, "user", partition, g.s AS day, wait::BIGINT AS wait, count(*) AS n
FROM r JOIN grid g ON g.s <= r.start AND r.start < g.e
WHERE wait IS NOT NULL AND wait >= 0
GROUP BY ALL ORDER BY account, day, "user", partition, wait
"""


def local_zone() -> str:
    """What fixes this machine's local days: the TZ setting, else the zone /etc/localtime names."""
    tz = os.environ.get("TZ")
    if tz:
        return tz
    try:
        return os.path.realpath("/etc/localtime").split("zoneinfo/", 1)[-1]
    except OSError:
        return f"{time.tzname[0]}/{time.timezone}"


def midnight(epoch: int, *, after: bool) -> int:
    """The local midnight at or before `epoch` (after=False) or at or after it (after=True)."""
    day = date.fromtimestamp(epoch)
    start = int(time.mktime(day.timetuple()))
    if after and start < epoch:
        start = int(time.mktime((day + timedelta(days=1)).timetuple()))
    return start


def local_days(first: int, last: int) -> list[tuple[int, int]]:
    """The local days [s, e) from the one holding `first` to the one holding `last`."""
    out = []
    day = date.fromtimestamp(first)
    end = date.fromtimestamp(last)
    while day <= end:
        nxt = day + timedelta(days=1)
        out.append((int(time.mktime(day.timetuple())), int(time.mktime(nxt.timetuple()))))
        day = nxt
    return out


# The rows that cross a local midnight g.e (from the day g of their start, or submit) or ran more than once,
# without the summary's text (its numbers are columns; the text is most of a row's bytes).
_EDGES = """
SELECT p.* EXCLUDE (month, admin_comment) FROM {parts} p
LEFT JOIN grid g ON g.s <= coalesce(p.start, p.submit) AND coalesce(p.start, p.submit) < g.e
WHERE p.multi_run OR p."end" >= g.e
ORDER BY p.account, p.multi_run DESC, p."end"
"""

# The days' sums per local month (g.m: the first midnight of the day's month).
_MONTHS = """
SELECT account, "user", partition, state, g.m AS day, sum(heads)::BIGINT AS heads, {sums}
FROM days_table JOIN grid g ON g.s = days_table.day GROUP BY ALL ORDER BY account, day, "user", partition, state
"""

_PARTS = "read_parquet($1, hive_partitioning = true, hive_types = {'account': VARCHAR, 'month': VARCHAR})"


def build(files: Sequence[str]) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """The days, waits, edges and months tables (with an `account` column) of the partitions whose parts
    are `files` (paths in the store's account=/month= tree)."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    try:
        lo, hi = con.execute(f'SELECT min(coalesce(start, submit)), max("end") FROM {_PARTS}', [list(files)]
                             ).fetchall()[0]
        days = local_days(int(lo), int(hi)) if lo is not None and hi is not None else []
        con.register("grid", pa.table({"s": [d[0] for d in days], "e": [d[1] for d in days],
                                       "m": [month_start(d[0]) for d in days]},
                                      schema=pa.schema([("s", pa.int64()), ("e", pa.int64()), ("m", pa.int64())])))
        params: list[Any] = [list(files)]
        days_table = con.sql(_BUILD.format(parts=_PARTS, sums=PART_AGGREGATES), params=params).to_arrow_table()
        con.register("days_table", days_table)
        sums = ", ".join(f"sum({name}) AS {name}" for name in days_table.column_names[6:])
        return (days_table, con.sql(_WAITS.format(parts=_PARTS), params=params).to_arrow_table(),
                con.sql(_EDGES.format(parts=_PARTS), params=params).to_arrow_table(),
                con.sql(_MONTHS.format(sums=sums)).to_arrow_table())
    finally:
        con.close()
