"""The accounting store's rows (pure): sacct report lines -> one Arrow table with typed columns, one row
per allocation (a run of a job, an array task), and the energy summary read once, at ingest, into
columns. The schema is the store's contract with other engines (Spark, Trino, DuckDB): see
docs/report-store.md; add columns at the end, never change one.

Partitions are by account and by the local month the allocation ended in: the account is the unit of
access (a directory readable by the account's group) and the month keeps files few and large, since
a reader pays per file (measured: one month as 40 account files reads in ~0.14 s, as 1,240 day files
per account in ~3.6 s). Rows are sorted by end time, so a reader of one day skips the other row
groups by their statistics."""

from __future__ import annotations

import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpc_aidc.report.energy import job_energy
from hpc_aidc.report.rows import (
    C_ACCOUNT,
    C_COMMENT,
    C_ELAPSED,
    C_ELIGIBLE,
    C_END,
    C_JOBID,
    C_NAME,
    C_PARTITION,
    C_RAW,
    C_START,
    C_STATE,
    C_SUBMIT,
    C_TRES,
    C_USER,
    Tres,
    split_lines,
    state_word,
    time_parser,
    tres_counts,
)

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION = 2  # 2: multi_run

# (name, pyarrow type factory): the columns of a store file, in order. Times are epoch seconds (UTC); energy
# columns are null when the job has no readable summary; e_known says whether the report may count it.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("job_id", "string"),        # sacct JobID: 123, 123_4 (array task)
    ("job_id_raw", "string"),    # sacct JobIDRaw: the allocation's own id
    ("name", "string"),
    ("user", "string"),
    ("partition", "string"),
    ("state", "string"),         # first word of sacct State (COMPLETED, REQUEUED, CANCELLED, ...)
    ("cpus", "int32"),
    ("gpus", "int32"),
    ("nodes", "int32"),
    ("elapsed_s", "int64"),
    ("submit", "int64"),
    ("eligible", "int64"),
    ("start", "int64"),          # null: never ran
    ("end", "int64"),            # never null in the store (only finished allocations)
    ("admin_comment", "string"), # the energy summary of record (hpcai-energy-v1 ...), or other text
    ("comment_hash", "int64"),   # crc32 of admin_comment: one summary on two runs counts once
    ("e_present", "bool_"),       # a readable energy summary
    ("e_known", "bool_"),         # ... that gives this allocation's energy (GPU energy, or CPU for CPU jobs)
    ("e_gpu_j", "float64"),
    ("e_cpu_j", "float64"),
    ("e_util", "float64"),
    ("e_idle_gpu_s", "float64"),
    ("e_tokens", "float64"),
    ("e_samples", "float64"),
    ("e_simulated", "bool_"),
    ("multi_run", "bool_"),      # the job ran more than once (requeued): its summary may sit on several rows
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
SQL_TYPES = {"string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT", "float64": "DOUBLE", "bool_": "BOOLEAN"}
# account and month are the partition keys: in the directory names, not in the files (hive layout)
# An allocation's key: slurmdbd's own (id, submit; a requeue resets submit), and the start to tell runs
# apart even where a requeue kept the submit time.
KEY = ("job_id_raw", "submit", "start")


def arrow_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in COLUMNS])


def edge_schema() -> pa.Schema:
    """The rollups' edge rows (rollup): the store's columns but admin_comment (its numbers are columns)."""
    schema = arrow_schema()
    return schema.remove(schema.get_field_index("admin_comment"))


_RUNS = re.compile(r" runs=([0-9]+)")


def multi_run_ids(lines: Sequence[str]) -> set[str]:
    """Raw ids of jobs that ran more than once, as far as these lines show: several rows, a REQUEUED or
    NODE_FAIL run, or a summary over several runs (on the newest run, once it ends)."""
    counts: Counter[str] = Counter()
    out: set[str] = set()
    for c in split_lines(lines):
        raw = c[C_RAW]
        counts[raw] += 1
        state = state_word(c[C_STATE])
        runs = _RUNS.search(c[C_COMMENT]) if "runs=" in c[C_COMMENT] else None
        if state in ("REQUEUED", "NODE_FAIL") or (runs is not None and int(runs.group(1)) > 1):
            out.add(raw)
    return out | {raw for raw, n in counts.items() if n > 1}


def month_of(epoch: int) -> str:
    """The local month an allocation ended in: its partition."""
    return time.strftime("%Y-%m", time.localtime(epoch))


def to_columns(lines: Iterable[str], *, finished_only: bool, multi: set[str]) -> tuple[dict[str, list[object]],
                                                                                      list[str]]:
    """Columns (COLUMN_NAMES) and the account of each row, from sacct report lines. `finished_only`
    keeps allocations that ended (what ingest stores); otherwise running and pending ones too (the live
    tail of a report). `multi`: raw ids of jobs that ran more than once (multi_run_ids)."""
    cols: dict[str, list[object]] = {name: [] for name in COLUMN_NAMES}
    accounts: list[str] = []
    ts = time_parser()
    tres_cache: dict[str, Tres] = {}
    add = [cols[name].append for name in COLUMN_NAMES]
    for c in split_lines(lines):
        end = ts(c[C_END])
        if finished_only and end is None:
            continue
        tres = tres_cache.get(c[C_TRES])
        if tres is None:
            tres = tres_cache[c[C_TRES]] = tres_counts(c[C_TRES])
        comment = c[C_COMMENT]
        energy = job_energy(comment) if comment else None
        known = energy is not None and (energy.gpu_j is not None or (not tres.gpus and energy.cpu_j is not None))
        values: tuple[object, ...] = (
            c[C_JOBID], c[C_RAW], c[C_NAME], c[C_USER], c[C_PARTITION], state_word(c[C_STATE]),
            tres.cpus, tres.gpus, tres.nodes, int(c[C_ELAPSED]) if c[C_ELAPSED].isdigit() else 0,
            ts(c[C_SUBMIT]), ts(c[C_ELIGIBLE]), ts(c[C_START]), end, comment,
            zlib.crc32(comment.encode()) if comment else 0, energy is not None, known,
        )
        values += ((energy.gpu_j, energy.cpu_j, energy.util, energy.idle_gpu_s, energy.tokens, energy.samples,
                    energy.simulated) if energy is not None else (None,) * 6 + (False,))
        values += (c[C_RAW] in multi,)
        for append, value in zip(add, values, strict=True):
            append(value)
        accounts.append(c[C_ACCOUNT])
    return cols, accounts


@dataclass(frozen=True)
class TailRows:
    """A report's live tail (every allocation not stored yet) as columns: COLUMN_NAMES, then `account`.
    Reports load it into DuckDB from plain lists (query), without pyarrow, whose import alone costs
    a report from the store a fifth of its time."""

    columns: dict[str, list[object]]

    @property
    def num_rows(self) -> int:
        return len(self.columns["account"])

    def multi_run_jobs(self) -> tuple[str, ...]:
        """Raw ids of the jobs that ran more than once (their rows' multi_run), sorted."""
        return tuple(sorted({str(j) for j, m in zip(self.columns["job_id_raw"], self.columns["multi_run"],
                                                   strict=True) if m}))


def tail_rows(lines: Sequence[str]) -> TailRows:
    """The tail's rows from sacct report lines: running and pending allocations too, and `multi_run` set on
    the jobs that ran more than once as far as the lines show (multi_run_ids)."""
    cols, accounts = to_columns(lines, finished_only=False, multi=multi_run_ids(lines))
    return TailRows({**cols, "account": list(accounts)})


def to_table(lines: Sequence[str]) -> pa.Table:
    """The rows the store keeps (finished allocations), with the account as a column too (the ingest
    splits them into partitions by it)."""
    import pyarrow as pa

    cols, accounts = to_columns(lines, finished_only=True, multi=multi_run_ids(lines))
    table = pa.table(cols, schema=arrow_schema())
    return table.append_column("account", pa.array(accounts, pa.string()))
