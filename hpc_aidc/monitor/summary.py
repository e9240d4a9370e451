"""The per-node and per-job energy summary (pure). Energy comes from the NVML counter (end - start)
where a GPU has one, else from integrating its sampled power; a MIG slice carries its parent GPU's
energy, marked approximate. Node totals combine into a job's totals by `combine`, which is associative,
so nodes can be added in any order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hpc_aidc.monitor.rapl import package_j, rapl_delta_j
from hpc_aidc.monitor.series import NodeEnd, NodeMeta, Series
from hpc_aidc.monitor.work import Work

IDLE_UTIL_PCT = 5.0  # below this GPU utilisation a GPU counts as idle
J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class GpuSummary:
    uuid: str
    index: int | None
    name: str
    energy_j: float | None
    source: str  # "counter", "integrated" or "unavailable"
    power_mean_w: float | None
    power_max_w: float | None
    util_mean: float | None
    idle_s: float
    approximate: bool


@dataclass(frozen=True)
class Totals:
    nodes: tuple[str, ...]
    gpus: int
    gpu_j: float | None  # None: unavailable (never 0 for "unknown")
    cpu_j: float | None
    duration_s: float
    power_mean_w: float | None  # mean power of one GPU
    power_max_w: float | None  # highest sampled power of any GPU
    util_mean: float | None
    idle_gpu_s: float | None
    tokens: float | None
    samples: float | None
    source: str  # counter | integrated | mixed | unavailable
    simulated: bool
    approximate: bool
    missing: tuple[str, ...] = ()  # nodes of the job with no energy record
    runs: int = 1  # runs of the job these totals add up (a requeued job runs again)

    @property
    def gpu_kwh(self) -> float | None:
        return None if self.gpu_j is None else self.gpu_j / J_PER_KWH

    @property
    def j_per_token(self) -> float | None:
        return _per(self.gpu_j, self.tokens)

    @property
    def j_per_sample(self) -> float | None:
        return _per(self.gpu_j, self.samples)


def _per(joules: float | None, amount: float | None) -> float | None:
    return None if joules is None or not amount else joules / amount


@dataclass(frozen=True)
class NodeSummary:
    totals: Totals
    gpus: tuple[GpuSummary, ...]
    t_start: float
    t_end: float
    end_source: str  # sampler | epilog | live
    nvml: str


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def trapezoid_j(times: Sequence[float], watts: Sequence[float]) -> float:
    """Energy under sampled power; samples whose power is NaN split the curve (gap not counted)."""
    total = 0.0
    for i in range(1, len(times)):
        a, b = watts[i - 1], watts[i]
        if not (math.isnan(a) or math.isnan(b)):
            total += 0.5 * (a + b) * (times[i] - times[i - 1])
    return total


def counter_j(start_mj: int | None, end_mj: int | None) -> float | None:
    """Counter difference in J; None when either end is missing or the counter went backwards (a driver
    reload resets it), so the caller falls back to integration."""
    if start_mj is None or end_mj is None or end_mj < start_mj:
        return None
    return (end_mj - start_mj) / 1000.0


def idle_seconds(times: Sequence[float], util: Sequence[float]) -> float:
    return sum(times[i] - times[i - 1] for i in range(1, len(times))
               if not math.isnan(util[i - 1]) and util[i - 1] < IDLE_UTIL_PCT)


def summarize_node(meta: NodeMeta, series: Series, end: NodeEnd | None, work: Work) -> NodeSummary:
    """One node's summary. Without an end record (a running job) energy is integrated so far."""
    t_end = end.t_end if end is not None else (series.times[-1] if series.times else meta.t_start)
    gpus: list[GpuSummary] = []
    for i, dev in enumerate(meta.gpus):
        cols = series.gpus[i] if i < len(series.gpus) else None
        power = _finite(cols.power_w) if cols else []
        util = _finite(cols.util_gpu) if cols else []
        energy = counter_j(meta.start_counters_mj[i], end.end_counters_mj[i]) if end else None
        source = "counter"
        if energy is None:
            if cols is not None and len(power) >= 2:
                energy, source = trapezoid_j(series.times, cols.power_w), "integrated"
            else:
                source = "unavailable"
        gpus.append(GpuSummary(
            uuid=dev.uuid, index=dev.index, name=dev.name, energy_j=energy, source=source,
            power_mean_w=sum(power) / len(power) if power else None,
            power_max_w=max(power) if power else None,
            util_mean=sum(util) / len(util) if util else None,
            idle_s=idle_seconds(series.times, cols.util_gpu) if cols else 0.0,
            approximate=dev.approximate,
        ))
    known = [g.energy_j for g in gpus if g.energy_j is not None]
    sources = {g.source for g in gpus if g.energy_j is not None}
    means = [g.power_mean_w for g in gpus if g.power_mean_w is not None]
    maxes = [g.power_max_w for g in gpus if g.power_max_w is not None]
    utils = [g.util_mean for g in gpus if g.util_mean is not None]
    cpu = package_j(rapl_delta_j(meta.rapl_start, end.rapl_end if end else None))
    totals = Totals(
        nodes=(meta.node,),
        gpus=len(gpus),
        gpu_j=sum(known) if known else None,
        cpu_j=cpu,
        duration_s=max(0.0, t_end - meta.t_start),
        power_mean_w=sum(means) / len(means) if means else None,
        power_max_w=max(maxes) if maxes else None,
        util_mean=sum(utils) / len(utils) if utils else None,
        idle_gpu_s=sum(g.idle_s for g in gpus) if gpus else None,
        tokens=work.tokens,
        samples=work.samples,
        source=_source(sources),
        simulated=meta.simulated,
        approximate=any(g.approximate for g in gpus) or len(known) < len(gpus) or bool(meta.unresolved),
    )
    return NodeSummary(totals, tuple(gpus), meta.t_start, t_end,
                       end.source if end else "live", meta.nvml)


def _source(sources: set[str]) -> str:
    if not sources:
        return "unavailable"
    return sources.pop() if len(sources) == 1 else "mixed"


def unavailable_node(node: str) -> Totals:
    """Totals for a node of the job that left no record at all."""
    return Totals((), 0, None, None, 0.0, None, None, None, None, None, None, "unavailable", False, False,
                  missing=(node,))


def _sum(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _weighted(parts: Sequence[Totals], value: str) -> float | None:
    pairs = [(getattr(t, value), t.gpus) for t in parts if getattr(t, value) is not None and t.gpus]
    weight = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / weight if weight else None


def combine(parts: Sequence[Totals]) -> Totals:
    """One job's totals from its nodes' totals (order does not matter)."""
    if not parts:
        return replace(unavailable_node(""), missing=())
    sources = {t.source for t in parts if t.source != "unavailable"}
    maxes = [t.power_max_w for t in parts if t.power_max_w is not None]
    return Totals(
        nodes=tuple(sorted(n for t in parts for n in t.nodes)),
        gpus=sum(t.gpus for t in parts),
        gpu_j=_sum([t.gpu_j for t in parts]),
        cpu_j=_sum([t.cpu_j for t in parts]),
        duration_s=max(t.duration_s for t in parts),
        power_mean_w=_weighted(parts, "power_mean_w"),
        power_max_w=max(maxes) if maxes else None,
        util_mean=_weighted(parts, "util_mean"),
        idle_gpu_s=_sum([t.idle_gpu_s for t in parts]),
        tokens=_sum([t.tokens for t in parts]),
        samples=_sum([t.samples for t in parts]),
        source="mixed" if "mixed" in sources or len(sources) > 1 else (sources.pop() if sources
                                                                       else "unavailable"),
        simulated=any(t.simulated for t in parts),
        approximate=any(t.approximate for t in parts),
        missing=tuple(sorted(n for t in parts for n in t.missing)),
    )


def combine_runs(parts: Sequence[Totals]) -> Totals:
    """A job's totals from its runs' totals: runs follow each other, so energy, time and idle time add
    up; means are weighted by GPU-seconds; GPUs are the largest allocation of any run."""
    if not parts:
        return replace(unavailable_node(""), missing=())
    one = combine(parts)  # sums, maxima, sources and flags as for nodes
    weights = [t.gpus * t.duration_s for t in parts]

    def weighted(name: str) -> float | None:
        pairs = [(getattr(t, name), w) for t, w in zip(parts, weights, strict=True)
                 if getattr(t, name) is not None and w > 0]
        total = sum(w for _, w in pairs)
        fallback: float | None = getattr(one, name)
        return float(sum(v * w for v, w in pairs) / total) if total else fallback

    return replace(one, gpus=max(t.gpus for t in parts), duration_s=sum(t.duration_s for t in parts),
                   power_mean_w=weighted("power_mean_w"), util_mean=weighted("util_mean"),
                   nodes=tuple(sorted({n for t in parts for n in t.nodes})),
                   missing=tuple(sorted({n for t in parts for n in t.missing})),
                   runs=sum(t.runs for t in parts))


def with_missing(totals: Totals, missing: Sequence[str]) -> Totals:
    return replace(totals, missing=tuple(sorted({*totals.missing, *missing})))
