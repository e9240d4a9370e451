"""Reading a job's records back and building node summaries from them (edge around summary.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from hpc_aidc.monitor import series, store
from hpc_aidc.monitor.summary import GpuSummary, NodeSummary, Totals, summarize_node
from hpc_aidc.monitor.work import Work, add_work, parse_work


def load_meta(store_root: Path, job_id: str, node: str) -> series.NodeMeta | None:
    raw = store.read_json(store.node_file(store_root, job_id, node, "meta.json"))
    return None if raw is None else series.meta_from_json(raw)


def load_end(store_root: Path, job_id: str, node: str) -> series.NodeEnd | None:
    raw = store.read_json(store.node_file(store_root, job_id, node, "end.json"))
    return None if raw is None else series.end_from_json(raw)


def load_series(store_root: Path, job_id: str, node: str, ngpus: int) -> series.Series:
    data = store.read_bytes(store.node_file(store_root, job_id, node, "series.bin"))
    return series.decode_rows(data, ngpus)


def load_work(store_root: Path, job_id: str, node: str) -> Work:
    directory = store.job_dir(store_root, job_id)
    try:
        files = sorted(directory.glob(f"work.{node}.*"))
    except OSError:
        return Work()
    return add_work(parse_work(store.read_bytes(f).decode(errors="replace")) for f in files)


def node_summary(store_root: Path, job_id: str, node: str) -> NodeSummary | None:
    """The node's summary from its records (live when the job still runs); None without records."""
    meta = load_meta(store_root, job_id, node)
    if meta is None:
        return None
    return summarize_node(meta, load_series(store_root, job_id, node, len(meta.gpus)),
                          load_end(store_root, job_id, node), load_work(store_root, job_id, node))


def summary_to_json(s: NodeSummary) -> dict[str, Any]:
    out = asdict(s)
    out["totals"]["gpu_kwh"] = s.totals.gpu_kwh
    return out


def summary_from_json(d: dict[str, Any]) -> NodeSummary:
    t = dict(d["totals"])
    t.pop("gpu_kwh", None)
    totals = Totals(**{**t, "nodes": tuple(t["nodes"]), "missing": tuple(t["missing"])})
    gpus = tuple(GpuSummary(**g) for g in d["gpus"])
    return NodeSummary(totals, gpus, d["t_start"], d["t_end"], d["end_source"], d["nvml"])
