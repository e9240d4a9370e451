"""Reports as text: table, CSV, JSON (pure), and Parquet (needs pyarrow, imported only for it)."""

from __future__ import annotations

import csv
import importlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError
from hpc_aidc.render.table import format_duration, format_table
from hpc_aidc.report.aggregate import Report, Usage
from hpc_aidc.report.numbers import num, pct
from hpc_aidc.report.period import iso

FORMATS = ("table", "csv", "json", "parquet")

# (column, getter) for CSV/Parquet: raw numbers; None (unknown) stays empty/null.
_FLAT: tuple[tuple[str, Callable[[Usage], Any]], ...] = (
    ("jobs", lambda u: u.jobs), ("running", lambda u: u.running), ("requeues", lambda u: u.requeues),
    ("gpu_hours", lambda u: u.gpu_hours), ("cpu_hours", lambda u: u.cpu_hours),
    ("node_hours", lambda u: u.node_hours), ("wait_median_s", lambda u: u.wait_median_s),
    ("wait_p90_s", lambda u: u.wait_p90_s), ("energy_kwh", lambda u: u.energy_kwh),
    ("gpu_kwh", lambda u: u.gpu_kwh), ("energy_coverage", lambda u: u.energy_coverage),
    ("simulated_share", lambda u: u.simulated_share), ("cost_gpu", lambda u: u.cost_gpu),
    ("cost_energy", lambda u: u.cost_energy), ("cost_total", lambda u: u.cost_total),
    ("co2_kg", lambda u: u.co2_kg), ("gpu_util_mean", lambda u: u.gpu_util_mean),
    ("idle_gpu_hours", lambda u: u.idle_gpu_hours), ("j_per_token", lambda u: u.j_per_token),
    ("j_per_row", lambda u: u.j_per_row), ("states", lambda u: ";".join(f"{k}={v}" for k, v in u.states.items())),
)


def _num(value: float | None, digits: int = 1) -> str:
    return num(value, digits)


def _wait(value: float | None) -> str:
    return "-" if value is None else format_duration(value)


def _states(u: Usage) -> str:
    return " ".join(f"{k.lower()}:{v}" for k, v in u.states.items())


def to_table(report: Report) -> str:
    dims = list(report.dimensions)
    cur = report.currency
    headers = [*dims, "jobs", "GPU-h", "CPU-h", "node-h", "wait p50", "wait p90", "kWh", "energy data",
               f"cost {cur}", "CO2 kg", "GPU util %", "idle GPU-h", "J/token", "J/row", "states"]
    lines = [*report.lines, report.total]
    rows = [[*u.key, u.jobs, _num(u.gpu_hours), _num(u.cpu_hours), _num(u.node_hours), _wait(u.wait_median_s),
             _wait(u.wait_p90_s), _num(u.energy_kwh, 2), pct(u.energy_coverage), _num(u.cost_total, 2),
             _num(u.co2_kg, 2), _num(u.gpu_util_mean), _num(u.idle_gpu_hours), _num(u.j_per_token, 3),
             _num(u.j_per_row, 3), _states(u)] for u in lines]
    first_number = len(dims)
    table = format_table(headers, rows, right=range(first_number, first_number + 14))
    t = report.total
    notes = [f"Usage {iso(report.period.start)} .. {iso(report.period.end)} (jobs crossing the edges are "
             "pro-rated; running jobs count their time so far)."]
    notes.append(f"Energy data covers {pct(t.energy_coverage)} of the usage; jobs without an energy summary are "
                 "unknown, not 0, so kWh, energy cost and CO2 cover only that part.")
    if t.simulated_share > 0:
        notes.append(f"{pct(t.simulated_share)} of the measured energy comes from simulated GPUs (dev cluster).")
    return table + "\n\n" + "\n".join(notes)


def to_json(report: Report) -> dict[str, Any]:
    dims = list(report.dimensions)
    return {
        "period": {"since": iso(report.period.start), "until": iso(report.period.end)},
        "by": dims,
        "currency": report.currency,
        "lines": [u.to_json(dims) for u in report.lines],
        "total": report.total.to_json(dims),
    }


def to_json_text(report: Report) -> str:
    return json.dumps(to_json(report), indent=2, sort_keys=True)


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.dimensions, *(name for name, _ in _FLAT)])
    for u in [*report.lines, report.total]:
        writer.writerow([*u.key, *("" if (v := get(u)) is None else v for _, get in _FLAT)])
    return out.getvalue()


def write_parquet(report: Report, path: Path) -> None:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise ConfigError("Expected pyarrow for --format parquet. Got no pyarrow installed. "
                          "Install it (pip install pyarrow) or use --format csv.") from None
    columns: dict[str, list[Any]] = {d: [u.key[i] for u in report.lines] for i, d in enumerate(report.dimensions)}
    for name, get in _FLAT:
        columns[name] = [get(u) for u in report.lines]
    pq.write_table(pa.table(columns), str(path))


def render(report: Report, fmt: str) -> str:
    if fmt == "table":
        return to_table(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "json":
        return to_json_text(report)
    raise ConfigError(f"Expected a text format from table, csv, json. Got {fmt!r} instead.")
