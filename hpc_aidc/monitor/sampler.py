"""The per-node sampler (edge): exactly one per job per node, whoever starts first (prolog or the job
itself) takes the node lock; a second one returns "already-owned" at once. It reads the energy counters
at start, appends one row per interval to the series file (each row is one write(2), so `kill -9` loses
at most the current interval), and on SIGTERM/SIGINT reads the counters again and writes the end record.
Slurm's warning signals (USR1/USR2, sent to every step ahead of a time limit) do not stop it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from hpc_aidc.errors import ConfigError, expected
from hpc_aidc.monitor import series
from hpc_aidc.monitor.energy_store.layout import Owner, owner_for
from hpc_aidc.monitor.energy_store.node_lock import NodeLock
from hpc_aidc.monitor.energy_store.prepare import prepare_run_as_root, prepare_run_as_user
from hpc_aidc.monitor.energy_store.record_dir import RecordDir
from hpc_aidc.monitor.gpus import GpuToken
from hpc_aidc.monitor.nvml import Nvml, NvmlUnavailable, open_nvml
from hpc_aidc.monitor.rapl import POWERCAP, read_rapl

Outcome = Literal["sampled", "already-owned"]
MIN_INTERVAL_S = 0.05


@dataclass(frozen=True)
class SamplerConfig:
    store: Path
    job_id: str
    node: str
    interval_s: float = 1.0
    gpus: tuple[GpuToken, ...] | None = None  # None: every GPU of the node
    user: str | None = None
    account: str | None = None
    source: str = "job"
    max_duration_s: float | None = None
    rapl_root: Path = POWERCAP
    run: int = 0  # Slurm's restart count: each run of a requeued job has its own records

    def __post_init__(self) -> None:
        if not self.interval_s >= MIN_INTERVAL_S:
            raise ConfigError(expected(f"a sampling interval >= {MIN_INTERVAL_S} s", self.interval_s,
                                       "Pass --interval 1 (seconds) or similar."))


def _timed(read: Any) -> tuple[float, Any]:
    """A reading with the midpoint of the wall-clock times around it, so counters line up with time."""
    t0 = time.time()
    value = read()
    return (t0 + time.time()) / 2, value


def run_sampler(cfg: SamplerConfig, stop: threading.Event | None = None,
                environ: Mapping[str, str] | None = None,
                log: Callable[[str], None] = lambda message: None,
                ready: Callable[[], None] = lambda: None) -> Outcome:
    """Sample until `stop`. As root (the prolog) the run's records are root's own, in a directory made
    now (one planted before is set aside, see prepare_run_as_root); as the job's user (sites
    without the prolog) they are the user's, and a job root already measures is left alone. `ready` is
    called once this process owns the node's lock."""
    stop = stop or threading.Event()
    owner = owner_for(cfg.user, cfg.account)
    if os.geteuid() == 0:
        run_dir, notes = prepare_run_as_root(cfg.store, cfg.job_id, cfg.run, owner)
        for note in notes:
            log(note)
        file_owner = Owner(0, owner.gid)
    else:
        found = prepare_run_as_user(cfg.store, cfg.job_id, cfg.run, owner)
        if found is None:
            return "already-owned"
        run_dir, file_owner = found, owner
    with run_dir:
        lock = NodeLock(run_dir, cfg.node, file_owner)
        if not lock.acquire():
            return "already-owned"
        ready()
        try:
            _sample(cfg, run_dir, file_owner, stop, environ, log)
        finally:
            lock.release()
    return "sampled"


def _sample(cfg: SamplerConfig, run_dir: RecordDir, owner: Owner, stop: threading.Event,
            environ: Mapping[str, str] | None, log: Callable[[str], None] = lambda message: None) -> None:
    nvml: Nvml | None
    try:
        nvml = open_nvml(environ)
        reason = "ok"
    except NvmlUnavailable as exc:
        nvml, reason = None, str(exc)
    try:
        devices, unresolved = nvml.resolve(cfg.gpus) if nvml else ([], [])
        for token, why in unresolved:
            log(f"GPU {token} not measured: {why}")
        handles = [h for _, h in devices]
        counters = (lambda: tuple(nvml.counter_mj(h) for h in handles)) if nvml else (lambda: ())
        t_start, start_mj = _timed(counters)
        meta = series.NodeMeta(
            job_id=cfg.job_id, node=cfg.node, user=cfg.user or "", account=cfg.account or "",
            source=cfg.source, pid=os.getpid(), interval_s=cfg.interval_s, t_start=t_start,
            nvml=reason, driver=nvml.driver if nvml else "", simulated=bool(nvml and nvml.simulated),
            gpus=tuple(d for d, _ in devices), start_counters_mj=start_mj,
            rapl_start=read_rapl(cfg.rapl_root), run=cfg.run, unresolved=tuple(t for t, _ in unresolved),
        )
        # A stale end record (a job id used again) must not end this run before it started.
        run_dir.unlink(f"{cfg.node}.end.json")
        run_dir.write_json(f"{cfg.node}.meta.json", series.meta_to_json(meta), owner)
        fd = run_dir.create_append(f"{cfg.node}.series.bin", owner) if handles else None
        try:
            _loop(cfg, nvml, handles, fd, stop, time.monotonic())
        finally:
            if fd is not None:
                os.close(fd)
        t_end, end_mj = _timed(counters)
        end = series.NodeEnd(t_end, end_mj, read_rapl(cfg.rapl_root), "sampler")
        run_dir.write_json(f"{cfg.node}.end.json", series.end_to_json(end), owner)
    finally:
        if nvml:
            nvml.close()


def _loop(cfg: SamplerConfig, nvml: Nvml | None, handles: list[Any], fd: int | None,
          stop: threading.Event, t0: float) -> None:
    tick = 0
    while not stop.is_set():
        if nvml and fd is not None:
            t, samples = _timed(lambda: [nvml.sample(h) for h in handles])
            row = series.encode_row(t, samples)
            os.write(fd, row)  # one row, one write: the page cache keeps it if we are killed
        tick += 1
        if cfg.max_duration_s is not None and tick * cfg.interval_s >= cfg.max_duration_s:
            return
        # Deadlines from a fixed origin keep the rate exact however long a sample took.
        stop.wait(max(0.0, t0 + tick * cfg.interval_s - time.monotonic()))


# Slurm's warning signals, which reach every job step when a job asks for --signal=USR2@<s> without
# "B:" (submitit's form): they tell training to checkpoint, not the sampler to stop. Without this, their
# default action kills a job-started sampler minutes before the job ends, and it writes no end record.
WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (Slurm's job end, the epilog) and SIGINT end sampling cleanly; Slurm's warning signals
    (USR1, USR2) are ignored: the sampler measures until the job really ends."""
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    for sig in WARNING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
