"""The per-node record format (pure). A node's records are three small files:
  <node>.meta.json   written once at start: GPUs, start counters, RAPL start, interval, owner;
  <node>.series.bin  append-only fixed-size little-endian rows, one per interval:
                     f64 unix time, then per GPU 6 x f32 (power W, GPU util %, memory util %, memory used
                     MiB, temperature C, SM clock MHz) and u32 throttle reasons (NaN = not supported);
  <node>.end.json    end counters and RAPL end, written by the sampler on SIGTERM or by the epilog.
Fixed rows keep the series compact (8 + 28 bytes per GPU per sample) and make a row torn by `kill -9`
detectable: a trailing partial row is dropped on read."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor.nvml import GpuDevice, GpuSample
from hpc_aidc.monitor.rapl import RaplReading

FORMAT_VERSION = 1
COLUMNS = ("power_w", "util_gpu", "util_mem", "mem_used_mib", "temp_c", "sm_mhz", "throttle")
_GPU_FORMAT = "ffffffI"


def row_struct(ngpus: int) -> struct.Struct:
    return struct.Struct("<d" + _GPU_FORMAT * ngpus)


def encode_row(t: float, samples: Sequence[GpuSample]) -> bytes:
    values: list[float | int] = [t]
    for s in samples:
        values += [s.power_w, s.util_gpu, s.util_mem, s.mem_used_mib, s.temp_c, s.sm_mhz, s.throttle]
    return row_struct(len(samples)).pack(*values)


@dataclass(frozen=True)
class GpuColumns:
    power_w: tuple[float, ...]
    util_gpu: tuple[float, ...]
    util_mem: tuple[float, ...]
    mem_used_mib: tuple[float, ...]
    temp_c: tuple[float, ...]
    sm_mhz: tuple[float, ...]
    throttle: tuple[int, ...]


@dataclass(frozen=True)
class Series:
    times: tuple[float, ...]
    gpus: tuple[GpuColumns, ...]


def decode_rows(data: bytes, ngpus: int) -> Series:
    """Columns from the raw series file; a trailing torn row is ignored."""
    layout = row_struct(ngpus)
    whole = len(data) - len(data) % layout.size
    rows = list(layout.iter_unpack(data[:whole]))
    times = tuple(float(r[0]) for r in rows)
    gpus = []
    for g in range(ngpus):
        base = 1 + 7 * g
        cols = [tuple(r[base + c] for c in range(7)) for r in rows]
        transposed = list(zip(*cols, strict=True)) if cols else [()] * 7
        gpus.append(GpuColumns(*(tuple(col) for col in transposed)))
    return Series(times, tuple(gpus))


@dataclass(frozen=True)
class NodeMeta:
    job_id: str
    node: str
    user: str
    account: str
    source: str  # who started the sampler: "prolog" or "job"
    pid: int
    interval_s: float
    t_start: float
    nvml: str  # "ok" or why NVML is unavailable
    driver: str
    simulated: bool
    gpus: tuple[GpuDevice, ...]
    start_counters_mj: tuple[int | None, ...]
    rapl_start: RaplReading | None
    run: int = 0  # Slurm's restart count
    version: int = FORMAT_VERSION
    # The job's GPUs (as Slurm named them) that no GPU of the node matched: not measured, so the node's
    # figures are approximate (low), never silently complete.
    unresolved: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeEnd:
    t_end: float
    end_counters_mj: tuple[int | None, ...]
    rapl_end: RaplReading | None
    source: str  # "sampler" (clean stop) or "epilog" (sampler gone: counters read afterwards)


def _rapl_json(r: RaplReading | None) -> dict[str, Any] | None:
    return None if r is None else {"energy_uj": dict(r.energy_uj), "max_uj": dict(r.max_uj)}


def _rapl_from(d: Mapping[str, Any] | None) -> RaplReading | None:
    return None if d is None else RaplReading(dict(d["energy_uj"]), dict(d["max_uj"]))


def meta_to_json(m: NodeMeta) -> dict[str, Any]:
    out = asdict(m)
    out["rapl_start"] = _rapl_json(m.rapl_start)
    return out


def meta_from_json(d: Mapping[str, Any]) -> NodeMeta:
    if d.get("version") != FORMAT_VERSION:
        raise EnergyError(
            f"Expected energy record format {FORMAT_VERSION}. Got {d.get('version')!r} instead. "
            "Read it with the hpc-aidc version that wrote it."
        )
    fields = dict(d)
    fields["gpus"] = tuple(GpuDevice(**{**g, "requested": tuple(g["requested"])}) for g in d["gpus"])
    fields["start_counters_mj"] = tuple(d["start_counters_mj"])
    fields["rapl_start"] = _rapl_from(d.get("rapl_start"))
    fields["unresolved"] = tuple(d.get("unresolved", ()))
    return NodeMeta(**fields)


def end_to_json(e: NodeEnd) -> dict[str, Any]:
    out = asdict(e)
    out["rapl_end"] = _rapl_json(e.rapl_end)
    return out


def end_from_json(d: Mapping[str, Any]) -> NodeEnd:
    return NodeEnd(float(d["t_end"]), tuple(d["end_counters_mj"]), _rapl_from(d.get("rapl_end")),
                   str(d["source"]))
