"""Reading a run's records back and building node summaries from them (edge around summary.py). Every
read goes through an open RecordDir (no links followed, regular files only, bounded sizes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor import series
from hpc_aidc.monitor.energy_store.layout import WORK_DIR, Owner, check_node, run_name
from hpc_aidc.monitor.energy_store.record_dir import RecordDir
from hpc_aidc.monitor.energy_store.root import nodes_with_records, opened, runs
from hpc_aidc.monitor.summary import GpuSummary, NodeSummary, Totals, combine, summarize_node
from hpc_aidc.monitor.work import MAX_WORK_BYTES, Work, add_work, parse_work

# What root reads of a node's work reports at most: the job's user makes work/ as large as they like while the
# job runs, so past these the node's work counts as unknown (no J/token) rather than read without end.
MAX_WORK_NAMES = 65536        # names looked at in work/ (every node's)
MAX_WORK_FILES = 1024         # this node's reports (one per process that reported)
MAX_WORK_TOTAL = 16 << 20     # bytes of them, each file read up to MAX_WORK_BYTES


@contextmanager
def run_dir(store_root: Path, job_id: str, run: int) -> Iterator[RecordDir | None]:
    with opened(store_root, job_id, run_name(run)) as found:
        yield found


def load_meta(run: RecordDir, node: str) -> series.NodeMeta | None:
    raw = run.read_json(f"{check_node(node)}.meta.json")
    if raw is None:
        return None
    try:
        return series.meta_from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EnergyError(f"Expected a valid energy record {run.path / node}.meta.json. Got a malformed "
                          f"one ({type(exc).__name__}). It was not written by hpc-aidc.") from None


def load_end(run: RecordDir, node: str) -> series.NodeEnd | None:
    raw = run.read_json(f"{check_node(node)}.end.json")
    if raw is None:
        return None
    try:
        return series.end_from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a torn or foreign end record: the counters are read again instead


def load_series(run: RecordDir, node: str, ngpus: int) -> series.Series:
    return series.decode_rows(run.read(f"{check_node(node)}.series.bin") or b"", ngpus)


def work_record_name(node: str) -> str:
    return f"{check_node(node)}.work.json"


@dataclass(frozen=True)
class NodeWork:
    work: Work
    names: tuple[str, ...]   # the report files counted
    complete: bool           # False: past the bounds, work unknown


def read_node_work(work_dir: RecordDir, node: str) -> NodeWork:
    """This node's work reports in work/, bounded (names looked at, files, bytes): regular files only, no link
    followed, a FIFO never opened for long (RecordDir.read)."""
    if not work_dir.readable:
        work_dir.names()  # says who may read it (AccessError)
    prefix = f"work.{check_node(node)}."
    names: list[str] = []
    with os.scandir(work_dir.fd) as entries:
        for seen, entry in enumerate(entries):
            if seen >= MAX_WORK_NAMES or len(names) > MAX_WORK_FILES:
                return NodeWork(Work(), (), False)
            if entry.name.startswith(prefix):
                names.append(entry.name)
    texts, total = [], 0
    for name in sorted(names):
        text = work_dir.read(name, MAX_WORK_BYTES)
        total += len(text or b"")
        if total > MAX_WORK_TOTAL:
            return NodeWork(Work(), (), False)
        if text:
            texts.append(text)
    return NodeWork(add_work(parse_work(t.decode(errors="replace")) for t in texts), tuple(names), True)


def load_work(run: RecordDir, node: str) -> Work:
    """The work this node's processes reported: once the run ended there, root's count of it
    (<node>.work.json, see close_work); while it runs, the reports themselves (the job's user writes them:
    parsed, never trusted for anything but the tokens and samples they claim)."""
    counted = run.read_json(work_record_name(node))
    if isinstance(counted, dict):
        return _work_from_json(counted)
    work = run.sub(WORK_DIR)
    if work is None:
        return Work()
    with work:
        return read_node_work(work, node).work


def _work_from_json(d: dict[str, Any]) -> Work:
    def number(key: str) -> float | None:
        value = d.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return Work(number("tokens"), number("samples"))


def close_work(run: RecordDir, node: str) -> list[str]:
    """Root, in the node epilog, once the run ended on this node: take work/ from the job's user (root's, mode
    0700: from now on they can neither add a file, nor grow one, nor reach one), count this node's reports once
    (bounded) into <node>.work.json beside the other records, and remove them. Only in a run directory root
    owns; returns notes for the log."""
    if os.geteuid() != 0 or not run.root_owned:
        return []
    try:
        work = run.sub(WORK_DIR)
    except EnergyError as exc:
        return [str(exc)]
    notes: list[str] = []
    counted = NodeWork(Work(), (), True)
    if work is not None:
        with work:
            if (work.uid, work.gid, work.mode) != (0, run.gid, 0o700):
                os.fchown(work.fd, 0, run.gid)
                os.fchmod(work.fd, 0o700)
                work.refresh()
            if run.read(work_record_name(node)) is not None:
                return notes  # counted before (an epilog that ran again)
            counted = read_node_work(work, node)
            if not counted.complete:
                notes.append(f"work reports of {node} in {work.path} exceed {MAX_WORK_FILES} files or "
                             f"{MAX_WORK_TOTAL >> 20} MiB: work not counted (no J/token)")
            _write_work(run, node, counted)
            for name in counted.names:
                work.unlink(name)
            return notes
    _write_work(run, node, counted)
    return notes


def _write_work(run: RecordDir, node: str, counted: NodeWork) -> None:
    record = {"tokens": counted.work.tokens, "samples": counted.work.samples, "reports": len(counted.names),
              "complete": counted.complete}
    run.write_json(work_record_name(node), record, Owner(0, run.gid))


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
    for run in runs(store_root, job_id):
        with run_dir(store_root, job_id, run) as found:
            if found is None:
                continue
            summaries, power = [], []
            for node in nodes_with_records(found):
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
