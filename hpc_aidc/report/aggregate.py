"""Usage and energy per group (account, user, partition, day, week, month), pure.

Rules (those of sreport where it has one):
- Usage is allocation x time inside the period: a job that crosses the period's edges counts only the
  part inside it (pro-rated); a running job counts its elapsed time so far (until `Period.now`).
- Every run of a requeued job is a row of its own (sacct --duplicates) and counts its own usage; the
  runs that ended in REQUEUED are counted as requeues, not as jobs. Array tasks are jobs of their own.
- A job's energy is its summary's GPU + CPU energy, pro-rated like its time. The summary on a job's newest
  run holds the energy of all its runs (`runs=N`), so earlier runs (REQUEUED, or FAILED and then requeued,
  whose rows keep their own run's summary) and running jobs count as unknown energy, and nothing is
  counted twice. A job without a readable
  summary has *unknown* energy, never 0: `energy_coverage` is the share of GPU-hours (CPU-hours for
  groups without GPUs) whose energy is known, and cost/CO2 of energy cover only that part.
- Queue wait (start - eligible, else submit) counts for jobs that started inside the period."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hpc_aidc.errors import ConfigError
from hpc_aidc.report.energy import job_energy
from hpc_aidc.report.period import TIME_DIMENSIONS, Buckets, Period, buckets
from hpc_aidc.report.rows import (
    C_ACCOUNT,
    C_COMMENT,
    C_ELIGIBLE,
    C_END,
    C_PARTITION,
    C_RAW,
    C_START,
    C_STATE,
    C_SUBMIT,
    C_TRES,
    C_USER,
    Tres,
    newest_runs,
    split_lines,
    state_word,
    time_parser,
    tres_counts,
)
from hpc_aidc.site_profile import Prices

DIMENSIONS = ("account", "user", "partition", *TIME_DIMENSIONS)
_COLUMN = {"account": C_ACCOUNT, "user": C_USER, "partition": C_PARTITION}
J_PER_KWH = 3.6e6
REQUEUED = "REQUEUED"


class Acc:
    """Running sums for one group; `merge` adds another (so chunks can be aggregated apart)."""

    __slots__ = (
        "cpu_j",
        "cpu_s",
        "energy_cpu_s",
        "energy_gpu_s",
        "gpu_j",
        "gpu_s",
        "idle_gpu_s",
        "jobs",
        "node_s",
        "requeues",
        "running",
        "sample_j",
        "samples",
        "simulated_gpu_s",
        "states",
        "token_j",
        "tokens",
        "util_gpu_s",
        "util_weighted",
        "waits",
    )

    def __init__(self) -> None:
        self.jobs = 0
        self.requeues = 0
        self.running = 0
        self.states: dict[str, int] = {}
        self.gpu_s = 0.0
        self.cpu_s = 0.0
        self.node_s = 0.0
        self.waits: list[int] = []
        self.gpu_j = 0.0
        self.cpu_j = 0.0
        self.energy_gpu_s = 0.0  # GPU-seconds whose energy is known
        self.energy_cpu_s = 0.0  # CPU-seconds whose energy is known
        self.simulated_gpu_s = 0.0
        self.util_weighted = 0.0
        self.util_gpu_s = 0.0
        self.idle_gpu_s = 0.0
        self.token_j = 0.0
        self.tokens = 0.0
        self.sample_j = 0.0
        self.samples = 0.0

    def merge(self, other: Acc) -> None:
        for name in self.__slots__:
            mine = getattr(self, name)
            theirs = getattr(other, name)
            if name == "states":
                for state, count in theirs.items():
                    mine[state] = mine.get(state, 0) + count
            elif name == "waits":
                mine.extend(theirs)
            else:
                setattr(self, name, mine + theirs)


@dataclass(frozen=True)
class Usage:
    """One group's report line. Energy-derived values are None when no job of the group has energy."""

    key: tuple[str, ...]
    jobs: int
    running: int
    requeues: int
    states: dict[str, int]
    gpu_hours: float
    cpu_hours: float
    node_hours: float
    wait_median_s: float | None
    wait_p90_s: float | None
    energy_kwh: float | None
    gpu_kwh: float | None
    energy_coverage: float  # 0..1 share of usage with known energy
    simulated_share: float  # 0..1 share of known-energy usage measured on simulated GPUs
    cost_gpu: float
    cost_energy: float | None
    cost_total: float
    co2_kg: float | None
    gpu_util_mean: float | None  # percent
    idle_gpu_hours: float | None
    j_per_token: float | None
    j_per_row: float | None = None  # GPU joules per row (inference) or sample the jobs reported

    def to_json(self, dimensions: Sequence[str]) -> dict[str, object]:
        out: dict[str, object] = dict(zip(dimensions, self.key, strict=True))
        for name in self.__dataclass_fields__:
            if name != "key":
                out[name] = getattr(self, name)
        return out


def quantile(sorted_values: Sequence[int], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default) of sorted values; None for none."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def finish(key: tuple[str, ...], acc: Acc, prices: Prices,
           wait_quantiles: tuple[float | None, float | None] | None = None) -> Usage:
    """Derived values (hours, quantiles, cost, CO2) from a group's sums; the queue-wait median and p90
    come from `acc.waits` unless given (the store's query computes them itself)."""
    if wait_quantiles is None:
        waits = sorted(acc.waits)
        wait_quantiles = quantile(waits, 0.5), quantile(waits, 0.9)
    known_j = acc.gpu_j + acc.cpu_j
    has_energy = acc.energy_gpu_s > 0 or acc.energy_cpu_s > 0
    kwh = known_j / J_PER_KWH if has_energy else None
    coverage = acc.energy_gpu_s / acc.gpu_s if acc.gpu_s > 0 else acc.energy_cpu_s / acc.cpu_s if acc.cpu_s > 0 else 0.0
    cost_gpu = acc.gpu_s / 3600.0 * prices.gpu_hour
    cost_energy = None if kwh is None else kwh * prices.pue * prices.kwh
    return Usage(
        key=key, jobs=acc.jobs, running=acc.running, requeues=acc.requeues, states=dict(sorted(acc.states.items())),
        gpu_hours=acc.gpu_s / 3600.0, cpu_hours=acc.cpu_s / 3600.0, node_hours=acc.node_s / 3600.0,
        wait_median_s=wait_quantiles[0], wait_p90_s=wait_quantiles[1],
        energy_kwh=kwh, gpu_kwh=acc.gpu_j / J_PER_KWH if has_energy else None,
        energy_coverage=min(1.0, coverage),
        simulated_share=acc.simulated_gpu_s / acc.energy_gpu_s if acc.energy_gpu_s else 0.0,
        cost_gpu=cost_gpu, cost_energy=cost_energy, cost_total=cost_gpu + (cost_energy or 0.0),
        co2_kg=None if kwh is None else kwh * prices.pue * prices.carbon_g_per_kwh / 1000.0,
        gpu_util_mean=acc.util_weighted / acc.util_gpu_s if acc.util_gpu_s else None,
        idle_gpu_hours=acc.idle_gpu_s / 3600.0 if has_energy and acc.gpu_s else None,
        j_per_token=acc.token_j / acc.tokens if acc.tokens else None,
        j_per_row=acc.sample_j / acc.samples if acc.samples else None,
    )


def check_dimensions(dimensions: Sequence[str]) -> tuple[str, ...]:
    dims = tuple(dimensions)
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown or not dims:
        raise ConfigError(f"Expected --by from {', '.join(DIMENSIONS)}. Got {unknown or 'none'} instead. "
                          "Example: --by account --by month.")
    if len([d for d in dims if d in TIME_DIMENSIONS]) > 1:
        raise ConfigError(f"Expected at most one time bucket (day, week or month) in --by. Got {list(dims)} instead.")
    if len(set(dims)) != len(dims):
        raise ConfigError(f"Expected each --by dimension once. Got {list(dims)} instead.")
    return dims


@dataclass(frozen=True)
class Filters:
    accounts: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    partitions: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.accounts or self.users or self.partitions)

    def keep(self, cols: Sequence[str]) -> bool:
        return ((not self.accounts or cols[C_ACCOUNT] in self.accounts)
                and (not self.users or cols[C_USER] in self.users)
                and (not self.partitions or cols[C_PARTITION] in self.partitions))


def accumulate(lines: Iterable[str], period: Period, dimensions: Sequence[str],
               filters: Filters = Filters()) -> dict[tuple[str, ...], Acc]:
    """The per-group sums of sacct lines (REPORT_FIELDS) over `period`: the hot loop of a report,
    written for a million lines (no per-row objects beyond the split)."""
    dims = check_dimensions(dimensions)
    time_dim = next((d for d in dims if d in TIME_DIMENSIONS), None)
    cal: Buckets | None = buckets(period, time_dim) if time_dim else None
    tpos = dims.index(time_dim) if time_dim else -1
    idx = [_COLUMN.get(d, -1) for d in dims]
    single = idx[0] if len(dims) == 1 and idx[0] >= 0 else -1
    p0, p1, now = period.start, period.end, period.now
    groups: dict[tuple[str, ...], Acc] = {}
    seen_energy: set[tuple[str, str]] = set()
    tres_cache: dict[str, Tres] = {}
    ts = time_parser()

    def key_for(cols: list[str], label: str) -> tuple[str, ...]:
        return tuple(label if i == tpos else cols[j] for i, j in enumerate(idx))

    rows = lines if isinstance(lines, list) else list(lines)
    newest = newest_runs(rows)
    for cols in split_lines(rows):
        if filters and not filters.keep(cols):
            continue
        start = ts(cols[C_START])
        end_text = cols[C_END]
        if start is None:
            submit = ts(cols[C_SUBMIT])
            if submit is None or not p0 <= submit < p1:
                continue  # never ran and not submitted in the period
            a = b = end = submit
            finished = True
        else:
            ended = ts(end_text)
            finished = ended is not None
            end = ended if ended is not None else max(now, start)
            if start >= p1 or end < p0:
                continue
            a = start if start > p0 else p0
            b = end if end < p1 else p1
        # where the job's counts go: one group, or the time buckets it spans
        if cal is None:
            head = (cols[single],) if single >= 0 else key_for(cols, "")
            parts = [(head, b - a)]
        else:
            parts = [(key_for(cols, cal.labels[i]), secs) for i, secs in cal.split(a, b)]
            head = parts[0][0] if parts else key_for(cols, cal.labels[cal.index(a)])
        acc = groups.get(head)
        if acc is None:
            acc = groups[head] = Acc()
        # job counts and queue wait: once, in the first group
        state = state_word(cols[C_STATE])
        if state == REQUEUED:
            acc.requeues += 1
        else:
            acc.jobs += 1
            acc.states[state] = acc.states.get(state, 0) + 1
            if not finished:
                acc.running += 1
        if start is None:
            continue
        if p0 <= start < p1:
            since = ts(cols[C_ELIGIBLE]) or ts(cols[C_SUBMIT])
            if since is not None and start >= since:
                acc.waits.append(start - since)
        tres = tres_cache.get(cols[C_TRES])
        if tres is None:
            tres = tres_cache[cols[C_TRES]] = tres_counts(cols[C_TRES])
        cpus, gpus, nodes = tres
        comment = cols[C_COMMENT]
        # the newest run of a job holds the summary of all its runs (sacctmgr writes that run only); an
        # earlier run keeps the part-summary of when it ended, so it and still-running runs have unknown energy
        later = newest.get(cols[C_RAW])
        earlier_run = state == REQUEUED or (later is not None and cols[C_SUBMIT] < later)
        energy = job_energy(comment) if comment and finished and not earlier_run and b > a else None
        if energy is not None:
            known = energy.gpu_j is not None or (not gpus and energy.cpu_j is not None)
            mark = (cols[C_RAW], comment)
            if not known or mark in seen_energy:
                energy = None  # unknown; or the same summary on two runs of a requeued job: count it once
            else:
                seen_energy.add(mark)
        duration = end - start
        for key, secs in parts:
            if key is not head:
                acc = groups.get(key)
                if acc is None:
                    acc = groups[key] = Acc()
            gpu_s = gpus * secs
            cpu_s = cpus * secs
            acc.gpu_s += gpu_s
            acc.cpu_s += cpu_s
            acc.node_s += nodes * secs
            if energy is None:
                continue
            frac = secs / duration if duration > 0 else 1.0
            if energy.gpu_j is not None:
                acc.gpu_j += energy.gpu_j * frac
                acc.energy_gpu_s += gpu_s
            if energy.cpu_j is not None:
                acc.cpu_j += energy.cpu_j * frac
                acc.energy_cpu_s += cpu_s
            if energy.simulated:
                acc.simulated_gpu_s += gpu_s
            if energy.util is not None:
                acc.util_weighted += energy.util * gpu_s
                acc.util_gpu_s += gpu_s
            if energy.idle_gpu_s is not None:
                acc.idle_gpu_s += energy.idle_gpu_s * frac
            if energy.tokens and energy.gpu_j is not None:
                acc.token_j += energy.gpu_j * frac
                acc.tokens += energy.tokens * frac
            if energy.samples and energy.gpu_j is not None:
                acc.sample_j += energy.gpu_j * frac
                acc.samples += energy.samples * frac
    return groups


@dataclass(frozen=True)
class Report:
    """A whole report: one line per group and the total over all of them."""

    period: Period
    dimensions: tuple[str, ...]
    lines: tuple[Usage, ...]
    total: Usage
    currency: str


def build_report(lines: Iterable[str], period: Period, dimensions: Sequence[str], prices: Prices,
                 filters: Filters = Filters()) -> Report:
    groups = accumulate(lines, period, dimensions, filters)
    return report_from_groups(groups, period, dimensions, prices)


def report_from_groups(groups: dict[tuple[str, ...], Acc], period: Period, dimensions: Sequence[str],
                       prices: Prices) -> Report:
    dims = check_dimensions(dimensions)
    everything = Acc()
    for part in groups.values():
        everything.merge(part)
    lines = tuple(finish(key, groups[key], prices) for key in sorted(groups))
    return Report(period, dims, lines, finish(("total",) + ("",) * (len(dims) - 1), everything, prices),
                  prices.currency)
