"""The end of a job on one node (node epilog, as root) and on the controller (EpilogSlurmctld).

Node: stop this job's sampler if it still runs, and if it never wrote its end record (killed with -9,
crashed) read the energy counters now, so the summary still comes from the counters; then write the
node summary and one accounting line. Controller: wait for every node's line, combine them into the
job's totals (nodes add up; none overwrites another)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpc_aidc.monitor import acct, records, series, store
from hpc_aidc.monitor.gpus import GpuToken
from hpc_aidc.monitor.nvml import NvmlUnavailable, open_nvml
from hpc_aidc.monitor.rapl import POWERCAP, read_rapl
from hpc_aidc.monitor.summary import NodeSummary, Totals, combine, unavailable_node


def stop_sampler(lock_path: Path, wait_s: float = 10.0) -> str:
    """SIGTERM the lock holder and wait for it to write its end record; SIGKILL if it hangs."""
    if not store.lock_held(lock_path):
        return "not-running"
    pid = store.lock_pid(lock_path)
    if pid is None:
        return "unknown-holder"
    for sig, patience in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not store.lock_held(lock_path):
                return "stopped" if sig == signal.SIGTERM else "killed"
            time.sleep(0.05)
    return "still-running"


def end_from_counters(meta: series.NodeMeta, environ: Mapping[str, str] | None,
                      rapl_root: Path) -> series.NodeEnd:
    """The end record read now by someone other than the sampler (same GPUs, by UUID)."""
    end_mj: tuple[int | None, ...] = tuple(None for _ in meta.gpus)
    t0 = time.time()
    if meta.gpus:
        try:
            nvml = open_nvml(environ)
        except NvmlUnavailable:
            nvml = None
        if nvml is not None:
            try:
                t0 = time.time()
                handles = [nvml.handle(GpuToken("uuid", g.uuid)) for g in meta.gpus]
                end_mj = tuple(nvml.counter_mj(h) for h in handles)
            finally:
                nvml.close()
    t_end = (t0 + time.time()) / 2
    return series.NodeEnd(t_end, end_mj, read_rapl(rapl_root), "epilog")


def finish_node(store_root: Path, job_id: str, node: str, environ: Mapping[str, str] | None = None,
                rapl_root: Path = POWERCAP, wait_s: float = 10.0) -> NodeSummary | None:
    directory = store.job_dir(store_root, job_id)
    stop_sampler(directory / f"{node}.lock", wait_s)
    meta = records.load_meta(store_root, job_id, node)
    if meta is None:
        write_accounting_line(store_root, job_id, node, _no_records(node))
        return None
    owner = store.owner_for(meta.user or None, meta.account or None)
    if records.load_end(store_root, job_id, node) is None:
        end = end_from_counters(meta, environ, rapl_root)
        store.write_json(store.node_file(store_root, job_id, node, "end.json"), series.end_to_json(end),
                         owner)
    summary = records.node_summary(store_root, job_id, node)
    assert summary is not None
    store.write_json(store.node_file(store_root, job_id, node, "summary.json"),
                     records.summary_to_json(summary), owner)
    write_accounting_line(store_root, job_id, node, summary.totals)
    return summary


def _no_records(node: str) -> Totals:
    # The node ran the job but no sampler ever recorded there: say so, as unavailable, not as 0 J.
    blank = unavailable_node(node)
    return Totals((node,), 0, None, None, 0.0, None, None, None, None, None, None, "unavailable",
                  blank.simulated, blank.approximate)


def accounting_path(store_root: Path, job_id: str, node: str) -> Path:
    return store_root / store.ACCOUNTING / f"{store.job_dir(store_root, job_id).name}.{node}"


def write_accounting_line(store_root: Path, job_id: str, node: str, totals: Totals) -> None:
    path = accounting_path(store_root, job_id, node)
    if not path.parent.is_dir():
        return  # no accounting directory: the site does not store energy in Slurm accounting
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(acct.encode(totals) + "\n")
    os.chmod(tmp, 0o640)  # group (the SlurmUser's, inherited from the setgid dir) reads it
    os.replace(tmp, path)


def combine_job(store_root: Path, job_id: str, nodes: Sequence[str], wait_s: float = 30.0,
                poll_s: float = 0.2) -> Totals:
    """The job's totals from its nodes' accounting lines, waiting up to wait_s for late node epilogs
    (EpilogSlurmctld may start before they finish). Nodes without a line are listed as missing."""
    deadline = time.monotonic() + wait_s
    paths = {node: accounting_path(store_root, job_id, node) for node in nodes}
    while True:
        absent = [n for n, p in paths.items() if not p.exists()]
        if not absent or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    parts = [acct.decode(paths[n].read_text()) if n not in absent else unavailable_node(n) for n in nodes]
    return combine(parts)
