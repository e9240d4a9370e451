"""Reading a run's records back and building node summaries from them (edge around summary.py). Every
read goes through an open RecordDir (no links followed, regular files only, bounded sizes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor import series, store
from hpc_aidc.monitor.store import RecordDir
from hpc_aidc.monitor.summary import GpuSummary, NodeSummary, Totals, combine, summarize_node
from hpc_aidc.monitor.work import MAX_WORK_BYTES, Work, add_work, parse_work


@contextmanager
def run_dir(store_root: Path, job_id: str, run: int) -> Iterator[RecordDir | None]:
    with store.opened(store_root, job_id, store.run_name(run)) as found:
        yield found


def load_meta(run: RecordDir, node: str) -> series.NodeMeta | None:
    raw = run.read_json(f"{store.check_node(node)}.meta.json")
    if raw is None:
        return None
    try:
        return series.meta_from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EnergyError(f"Expected a valid energy record {run.path / node}.meta.json. Got a malformed "
                          f"one ({type(exc).__name__}). It was not written by hpc-aidc.") from None


def load_end(run: RecordDir, node: str) -> series.NodeEnd | None:
    raw = run.read_json(f"{store.check_node(node)}.end.json")
    if raw is None:
        return None
    try:
        return series.end_from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a torn or foreign end record: the counters are read again instead


def load_series(run: RecordDir, node: str, ngpus: int) -> series.Series:
    return series.decode_rows(run.read(f"{store.check_node(node)}.series.bin") or b"", ngpus)


def load_work(run: RecordDir, node: str) -> Work:
    """The work reports of this node's processes (the job's user writes them: parsed, never trusted
    for anything but the tokens and samples they claim)."""
    work = run.sub(store.WORK_DIR)
    if work is None:
        return Work()
    with work:
        prefix = f"work.{store.check_node(node)}."
        texts = [work.read(n, MAX_WORK_BYTES) for n in work.names() if n.startswith(prefix)]
    return add_work(parse_work(t.decode(errors="replace")) for t in texts if t)


def node_summary(run: RecordDir, node: str) -> NodeSummary | None:
    """The node's summary from its records (live when the job still runs); None without records."""
    meta = load_meta(run, node)
    if meta is None:
        return None
    return summarize_node(meta, load_series(run, node, len(meta.gpus)), load_end(run, node),
                          load_work(run, node))


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


@dataclass(frozen=True)
class RunRecords:
    """One run of a job as its records show it: per-node summaries and power over time."""

    run: int
    summaries: tuple[NodeSummary, ...]
    power: tuple[tuple[str, tuple[tuple[float, float], ...]], ...]  # (node, (time, W of its GPUs))

    @property
    def totals(self) -> Totals:
        return combine([s.totals for s in self.summaries])


def job_runs(store_root: Path, job_id: str) -> list[RunRecords]:
    """Every run of the job that has records, oldest first."""
    out: list[RunRecords] = []
    for run in store.runs(store_root, job_id):
        with run_dir(store_root, job_id, run) as found:
            if found is None:
                continue
            summaries, power = [], []
            for node in store.nodes_with_records(found):
                meta = load_meta(found, node)
                if meta is None:
                    continue
                s = load_series(found, node, len(meta.gpus))
                summaries.append(summarize_node(meta, s, load_end(found, node), load_work(found, node)))
                if meta.gpus:
                    power.append((node, tuple((t, sum(g.power_w[i] for g in s.gpus))
                                              for i, t in enumerate(s.times))))
        if summaries:
            out.append(RunRecords(run, tuple(summaries), tuple(power)))
    return out
