"""The end of a run on one node (node epilog, as root) and on the controller (EpilogSlurmctld).

Node: stop this run's sampler if it still runs (only a sampler root started and recorded itself, checked
in /proc), and if it never wrote its end record (killed with -9, crashed) read the energy counters now,
so the summary still comes from the counters; then write the node summary and one accounting line.
Records root did not write (a directory the job's user owns) never reach accounting.
Controller: wait for every node's line, combine them into the run's totals, and the runs into the
job's (nodes add up within a run, runs add up within a job; none overwrites another)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpc_aidc.ids import parse_job_id
from hpc_aidc.monitor import acct, records, series
from hpc_aidc.monitor.energy_store.layout import Owner, check_node, run_name
from hpc_aidc.monitor.energy_store.node_lock import lock_state
from hpc_aidc.monitor.energy_store.record_dir import RecordDir
from hpc_aidc.monitor.energy_store.root import accounting_dir, runs
from hpc_aidc.monitor.gpus import GpuToken
from hpc_aidc.monitor.nvml import NvmlUnavailable, open_nvml
from hpc_aidc.monitor.rapl import POWERCAP, read_rapl
from hpc_aidc.monitor.summary import NodeSummary, Totals, combine, combine_runs, unavailable_node


def _follows(args: Sequence[str], flag: str, value: str) -> bool:
    return any(args[i] == flag and args[i + 1] == value for i in range(len(args) - 1))


def is_sampler(pid: int, job_id: str, node: str, uid: int) -> bool:
    """Whether `pid` is, now, a process of `uid` sampling this job on this node (pids are reused)."""
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
        args = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return False
    return (owner == uid and "energy" in args and "sample" in args
            and _follows(args, "--job-id", job_id) and _follows(args, "--node", node))


def stop_sampler(run_dir: RecordDir, job_id: str, node: str, wait_s: float = 10.0) -> str:
    """SIGTERM the lock holder and wait for its end record; SIGKILL if it hangs. Only a pid recorded by
    ourselves in a lock file of ours (as root: in a root-owned directory) and only after /proc shows
    it is this job's sampler: a pid a user wrote is never signalled."""
    state = lock_state(run_dir, node)
    if not state.held:
        return "not-running"
    euid = os.geteuid()
    mine = state.file_uid == euid and (euid != 0 or run_dir.root_owned)
    if not mine or state.pid is None or not is_sampler(state.pid, job_id, node, euid):
        return "not-ours"
    for sig, patience in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, sig)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not lock_state(run_dir, node).held:
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


def finish_node(store_root: Path, job_id: str, node: str, run: int = 0,
                environ: Mapping[str, str] | None = None, rapl_root: Path = POWERCAP,
                wait_s: float = 10.0, log: list[str] | None = None) -> NodeSummary | None:
    """The node's summary of this run, written beside its records and as its accounting line."""
    notes = log if log is not None else []
    with records.run_dir(store_root, job_id, run) as run_dir:
        if run_dir is None:
            write_accounting_line(store_root, job_id, run, node, _no_records(node))
            return None
        trusted = run_dir.root_owned or os.geteuid() != 0
        notes.append(f"sampler {stop_sampler(run_dir, job_id, node, wait_s)}")
        if not trusted:
            # The job's user made these records (a site whose jobs sample themselves): root reads and
            # writes nothing there, and accounting says "unavailable" rather than a figure anyone forged.
            notes.append(f"records in {run_dir.path} are not root's own: not used for accounting")
            write_accounting_line(store_root, job_id, run, node, _no_records(node))
            return None
        meta = records.load_meta(run_dir, node)
        if meta is None:
            write_accounting_line(store_root, job_id, run, node, _no_records(node))
            return None
        owner = Owner(run_dir.uid, run_dir.gid)
        # The job is over here: its work reports are closed to its user and counted once, bounded.
        notes += records.close_work(run_dir, node)
        if records.load_end(run_dir, node) is None:
            end = end_from_counters(meta, environ, rapl_root)
            run_dir.write_json(f"{node}.end.json", series.end_to_json(end), owner)
        summary = records.node_summary(run_dir, node)
        assert summary is not None
        run_dir.write_json(f"{node}.summary.json", records.summary_to_json(summary), owner)
    write_accounting_line(store_root, job_id, run, node, summary.totals)
    return summary


def finish_epilog(store_root: Path, job_id: str, node: str, restart_count: int,
                  environ: Mapping[str, str] | None = None, rapl_root: Path = POWERCAP,
                  wait_s: float = 10.0, log: list[str] | None = None) -> list[NodeSummary]:
    """The node epilog: finish every run of the job that this node has records of and no summary yet.
    Slurm counts a requeue before the epilog of the run it ends, so the epilog's restart count may be
    one ahead of the run that just ended: runs are found by their records, not by that count."""
    done: list[NodeSummary] = []
    unfinished, seen = [], False
    for run in runs(store_root, job_id):
        if run > restart_count:
            continue
        with records.run_dir(store_root, job_id, run) as found:
            if found is None or not found.readable:
                continue
            names = set(found.names())
            trusted = found.root_owned
        if f"{node}.meta.json" in names:
            seen = True
            # A summary in a directory root does not own proves nothing: such runs always go through
            # finish_node, which keeps them out of accounting.
            if f"{node}.summary.json" not in names or not trusted:
                unfinished.append(run)
    for run in unfinished:
        summary = finish_node(store_root, job_id, node, run, environ, rapl_root, wait_s, log)
        if summary is not None:
            done.append(summary)
    if not seen:
        finish_node(store_root, job_id, node, restart_count, environ, rapl_root, wait_s, log)
    return done


def _no_records(node: str) -> Totals:
    # The node ran the job but no trusted sampler recorded there: say so, as unavailable, not as 0 J.
    blank = unavailable_node(node)
    return Totals((node,), 0, None, None, 0.0, None, None, None, None, None, None, "unavailable",
                  blank.simulated, blank.approximate)


def node_line_name(job_id: str, run: int, node: str) -> str:
    return f"{parse_job_id(job_id)}.{run_name(run)}.{check_node(node)}"


def run_line_name(job_id: str, run: int) -> str:
    return f"{parse_job_id(job_id)}.{run_name(run)}"


def write_accounting_line(store_root: Path, job_id: str, run: int, node: str, totals: Totals) -> None:
    box = accounting_dir(store_root)
    if box is None:
        return  # no accounting directory: the site does not store energy in Slurm accounting
    with box:
        # mode 0640: the group (the SlurmUser's, inherited from the setgid directory) reads it
        box.write(node_line_name(job_id, run, node), (acct.encode(totals) + "\n").encode(), None, 0o640)


def _run_lines(box: RecordDir, job_id: str) -> dict[int, dict[str, str]]:
    """{run: {node: line}} of the job's node lines in the accounting box."""
    out: dict[int, dict[str, str]] = {}
    prefix = f"{parse_job_id(job_id)}.r"
    for name in box.names():
        m = _NODE_LINE.match(name)
        if name.startswith(prefix) and m and m.group("job") == job_id and (text := box.read(name, 4096)):
            out.setdefault(int(m.group("run")), {})[m.group("node")] = text.decode()
    return out


def combine_ended_run(store_root: Path, job_id: str, restart_count: int, nodes: Sequence[str],
                      wait_s: float = 20.0, poll_s: float = 0.2) -> Totals | None:
    """EpilogSlurmctld: the totals of the run that just ended, kept as its run line. That run is
    `restart_count`, or the one before (when it has no run line yet) when Slurm counted a requeue
    first: whichever has a line from every node of the job first (waiting up to wait_s for late node
    epilogs), else the one with more lines.
    Nodes without a line are listed as missing. Runs with node lines but no run line are (re)written
    too, so nothing that arrived late is left out."""
    box = accounting_dir(store_root)
    if box is None:
        return None
    with box:
        candidates = [restart_count]
        if restart_count > 0 and run_line_name(job_id, restart_count - 1) not in set(box.names()):
            candidates.append(restart_count - 1)  # not stored yet: it may be the run that just ended
        deadline = time.monotonic() + wait_s
        while True:
            lines = _run_lines(box, job_id)
            complete = [r for r in candidates if set(nodes) <= set(lines.get(r, {}))]
            if complete or time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        ended = complete[0] if complete else max(candidates, key=lambda r: (len(lines.get(r, {})), r))
        totals: Totals | None = None
        existing = set(box.names())
        for run, by_node in sorted(lines.items()):
            if run != ended and run_line_name(job_id, run) in existing:
                continue
            parts = [acct.decode(text) for text in by_node.values()]
            if run == ended:
                parts += [unavailable_node(n) for n in nodes if n not in by_node]
            run_totals = combine(parts)
            box.write(run_line_name(job_id, run), (acct.encode(run_totals) + "\n").encode(), None, 0o640)
            if run == ended:
                totals = run_totals
        if totals is None:  # no node wrote anything for this job
            totals = combine([unavailable_node(n) for n in nodes])
            box.write(run_line_name(job_id, ended), (acct.encode(totals) + "\n").encode(), None, 0o640)
    return totals


_NODE_LINE = re.compile(r"^(?P<job>[0-9_]+)\.r(?P<run>[0-9]+)\.(?P<node>[A-Za-z0-9][A-Za-z0-9_.\-]*)$")
_RUN_LINE = re.compile(r"^(?P<job>[0-9_]+)\.r(?P<run>[0-9]+)$")


def job_totals(store_root: Path, job_id: str) -> Totals | None:
    """The job's totals over every run that has a run line (None when none has)."""
    box = accounting_dir(store_root)
    if box is None:
        return None
    with box:
        prefix = f"{parse_job_id(job_id)}.r"
        parts = [acct.decode(text.decode()) for name in box.names()
                 if name.startswith(prefix) and (m := _RUN_LINE.match(name)) and m.group("job") == job_id
                 and (text := box.read(name, 4096))]
    return combine_runs(parts) if parts else None
