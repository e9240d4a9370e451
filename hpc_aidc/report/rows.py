"""Accounting rows for reports: the sacct fields a report reads, and fast parsers (pure).

A month of a busy cluster is about a million allocations, so parsing is written for speed: one split
per line, TRES strings and timestamps cached (they repeat), times kept as epoch seconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from hpc_aidc.scheduler.parse import SACCT_DELIMITER, parse_tres

# Read with `sacct --allocations --duplicates --noheader --parsable2 --delimiter=<US>`: --duplicates
# keeps every run of a requeued job (each used the machine), --allocations drops the steps.
REPORT_FIELDS = (
    "JobID", "JobIDRaw", "JobName", "User", "Account", "Partition", "State", "AllocTRES", "ElapsedRaw",
    "Submit", "Eligible", "Start", "End", "AdminComment",
)
NFIELDS = len(REPORT_FIELDS)
(C_JOBID, C_RAW, C_NAME, C_USER, C_ACCOUNT, C_PARTITION, C_STATE, C_TRES, C_ELAPSED, C_SUBMIT, C_ELIGIBLE,
 C_START, C_END, C_COMMENT) = range(NFIELDS)


class JobRow(NamedTuple):
    """One allocation (one run of a job, one array task). Times are epoch seconds; None = unknown."""

    job_id: str
    job_id_raw: str
    name: str
    user: str
    account: str
    partition: str
    state: str
    cpus: int
    gpus: int
    nodes: int
    elapsed_s: int
    submit: int | None
    eligible: int | None
    start: int | None
    end: int | None  # None while the job runs
    admin_comment: str


class Tres(NamedTuple):
    cpus: int
    gpus: int
    nodes: int


def tres_counts(text: str) -> Tres:
    """AllocTRES -> (cpus, gpus, nodes); a malformed string counts as nothing allocated."""
    try:
        tres = parse_tres(text)
    except ValueError:
        return Tres(0, 0, 0)
    return Tres(int(tres.get("cpu", 0)), int(tres.get("gres/gpu", 0)), int(tres.get("node", 0)))


def time_parser() -> Callable[[str], int | None]:
    """sacct's local 'YYYY-MM-DDTHH:MM:SS' -> epoch seconds; 'Unknown', 'None', '' -> None. Caches the
    minute prefix: a month has 43,200 minutes and a million jobs, so almost every lookup hits."""
    minutes: dict[str, int] = {}

    def parse(text: str) -> int | None:
        base = minutes.get(text[:16])
        if base is None:
            if len(text) != 19 or text[4] != "-":
                return None
            try:
                base = int(time.mktime(time.strptime(text[:16], "%Y-%m-%dT%H:%M")))
            except ValueError:
                return None
            minutes[text[:16]] = base
        try:
            return base + int(text[17:19])
        except ValueError:
            return None

    return parse


def state_word(text: str) -> str:
    """'CANCELLED by 1001' -> 'CANCELLED'."""
    return text.split(" ", 1)[0] if " " in text else text


def split_lines(lines: Iterable[str]) -> Iterable[list[str]]:
    """The columns of each well-formed line (a truncated line must not shift columns)."""
    sep = SACCT_DELIMITER
    for line in lines:
        cols = line.rstrip("\n").split(sep)
        if len(cols) == NFIELDS:
            yield cols


def newest_runs(lines: Iterable[str]) -> dict[str, str]:
    """The submit time (sacct's text, which sorts as time does) of the newest run of each job that has more
    than one run among `lines`. That run's summary holds the totals over all runs: `sacctmgr modify job`
    writes only a job id's newest run, so an earlier one keeps the part-summary of when it ended (a job
    FAILED, then requeued, keeps a FAILED row with the first run's energy)."""
    sep = SACCT_DELIMITER
    newest: dict[str, str] = {}
    repeated: set[str] = set()
    for line in lines:
        if line.count(sep) != NFIELDS - 1:
            continue  # not well-formed: split_lines leaves it out too
        cols = line.split(sep, C_SUBMIT + 1)
        raw, submit = cols[C_RAW], cols[C_SUBMIT]
        seen = newest.get(raw)
        if seen is None:
            newest[raw] = submit
        else:
            repeated.add(raw)
            if submit > seen:
                newest[raw] = submit
    return {raw: newest[raw] for raw in repeated}


def parse_rows(lines: Iterable[str]) -> list[JobRow]:
    """Rows of `sacct ... --format=<REPORT_FIELDS>` as JobRow (for job lists; reports stream columns)."""
    ts = time_parser()
    out = []
    for c in split_lines(lines):
        tres = tres_counts(c[C_TRES])
        out.append(JobRow(
            c[C_JOBID], c[C_RAW], c[C_NAME], c[C_USER], c[C_ACCOUNT], c[C_PARTITION], state_word(c[C_STATE]),
            tres.cpus, tres.gpus, tres.nodes, int(c[C_ELAPSED]) if c[C_ELAPSED].isdigit() else 0,
            ts(c[C_SUBMIT]), ts(c[C_ELIGIBLE]), ts(c[C_START]), ts(c[C_END]), c[C_COMMENT],
        ))
    return out


def format_row(row: JobRow) -> str:
    """The sacct line for a row (writes synthetic inputs for tests and the benchmark)."""
    def t(value: int | None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(value)) if value is not None else "Unknown"

    tres = f"billing={row.cpus},cpu={row.cpus}" + (f",gres/gpu={row.gpus}" if row.gpus else "") + f",node={row.nodes}"
    return SACCT_DELIMITER.join([
        row.job_id, row.job_id_raw, row.name, row.user, row.account, row.partition, row.state,
        tres if row.start is not None else "", str(row.elapsed_s), t(row.submit), t(row.eligible),
        t(row.start), t(row.end), row.admin_comment,
    ])
