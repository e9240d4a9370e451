"""The node metrics writer (edge): NVML + the jobs running on this node -> a .prom file that
node_exporter's textfile collector serves (monitoring/README.md).

Which jobs run here comes from this node's slurmd spool directory (a job step's socket is named
`<node>_<jobid>.<stepid>`): a local directory listing, no call to slurmctld, however many nodes scrape.
Who a job belongs to and which GPUs it holds come from the energy record root's prolog wrote for it on
this node (`<energy_store>/<jobid>/r<run>/<node>.meta.json`), read like every root reader of the store
does (dirfd, no links followed, bounded); records a user could have written (a run directory that is not
root's) label nothing. The file is written to a temporary name in the collector's directory and renamed
over `hpcai-<node>.prom`; the directory must be root's and writable by nobody else. The file is 0640 in
the directory's group (node_exporter's, e.g. prometheus): it names every running job's user and account,
which PrivateData hides from other users (monitoring/README.md). On SIGTERM the file is removed, so a
stopped writer leaves no stale series behind."""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError, EnergyError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at
from hpc_aidc.monitor import records
from hpc_aidc.monitor.energy_store.root import runs
from hpc_aidc.monitor.nvml import Nvml, NvmlUnavailable, open_nvml
from hpc_aidc.render.metrics import GpuMetrics, JobMetrics, NodeMetrics, render_node_metrics

MAX_JOBS = 512  # a node never runs more; a spool full of junk must not make the file unbounded
# Readable by root and the collector directory's group (node_exporter's) only: the file names every job's
# user and account, which PrivateData=jobs,users hides from other users.
TEXTFILE_MODE = 0o640


@dataclass(frozen=True)
class WriterConfig:
    node: str
    textfile_dir: Path
    spool_dir: Path
    energy_store: Path | None
    interval_s: float = 15.0

    @property
    def file_name(self) -> str:
        return f"hpcai-{self.node}.prom"


def running_jobs(spool_dir: Path, node: str) -> list[str]:
    """Job ids with a step on this node now (slurmd's step sockets `<node>_<jobid>.<stepid>`)."""
    pattern = re.compile(rf"^{re.escape(node)}_([0-9]{{1,12}})\.[0-9]+$")
    try:
        names = os.listdir(spool_dir)
    except OSError:
        return []
    found = sorted({m.group(1) for n in names if (m := pattern.match(n))}, key=int)
    return found[:MAX_JOBS]


def job_record(store_root: Path, job_id: str, node: str) -> Any | None:
    """The newest run's meta record of this job on this node, when root wrote it; else None."""
    try:
        run_numbers = runs(store_root, job_id)
        if not run_numbers:
            return None
        with records.run_dir(store_root, job_id, run_numbers[-1]) as run:
            if run is None or not run.root_owned:
                return None
            return records.load_meta(run, node)
    except (EnergyError, OSError):
        return None


def check_textfile_dir(path: Path) -> int:
    """Open the collector directory: root's (or ours) and writable by nobody else, no link."""
    try:
        fd = os.open(path, DIR_FLAGS)
    except OSError as exc:
        raise ConfigError(f"Expected the textfile collector directory {path}. Got {exc.strerror}. Create it "
                          f"(`install -d -o root -g prometheus -m 0750 {path}`) and point node_exporter's "
                          "--collector.textfile.directory at it.") from None
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        os.close(fd)
        raise ConfigError(f"Expected {path} owned by root and writable by root alone. Got uid {st.st_uid}, mode "
                          f"{stat.S_IMODE(st.st_mode):o}: anyone could plant metrics there. Run "
                          f"`chown root:prometheus {path}; chmod 0750 {path}`.")
    return fd


def textfile_owner(dir_fd: int) -> tuple[int, int] | None:
    """(root, the directory's group) for the file when we are root: node_exporter reads it through that
    group, nobody else; None otherwise (a non-root writer's file keeps its own group)."""
    if os.geteuid() != 0:
        return None
    return 0, os.fstat(dir_fd).st_gid


def collect(cfg: WriterConfig, nvml: Nvml | None, now: float) -> NodeMetrics:
    gpus: list[GpuMetrics] = []
    counters: dict[str, int | None] = {}
    if nvml is not None:
        for device, handle in nvml.devices(None):
            sample = nvml.sample(handle)
            counter = nvml.counter_mj(handle)
            counters[device.uuid] = counter
            gpus.append(GpuMetrics(
                index=device.index if device.index is not None else len(gpus), uuid=device.uuid,
                name=device.name, pci=device.pci, power_w=sample.power_w, energy_mj=counter,
                util_gpu=sample.util_gpu, util_mem=sample.util_mem, mem_used_mib=sample.mem_used_mib,
                temp_c=sample.temp_c, sm_mhz=sample.sm_mhz, throttle=sample.throttle))
    power = {g.uuid: g.power_w for g in gpus}
    jobs: list[JobMetrics] = []
    if cfg.energy_store is not None:
        for job_id in running_jobs(cfg.spool_dir, cfg.node):
            meta = job_record(cfg.energy_store, job_id, cfg.node)
            if meta is None:
                continue
            uuids = tuple(g.uuid for g in meta.gpus)
            if not uuids:  # GPU metrics: a job without GPUs here has none (and adds no series)
                continue
            jobs.append(JobMetrics(job_id=job_id, user=meta.user, account=meta.account, gpu_uuids=uuids,
                                   energy_j=job_energy_j(uuids, meta.start_counters_mj, counters),
                                   power_w=sum(p for u in uuids if not math.isnan(p := power.get(u, math.nan)))))
    return NodeMetrics(node=cfg.node, time_s=now, nvml_up=nvml is not None,
                       simulated=bool(nvml and nvml.simulated), gpus=gpus, jobs=jobs)


def job_energy_j(uuids: Sequence[str], start_mj: Sequence[int | None], now_mj: dict[str, int | None]) -> float | None:
    """Energy of the job's GPUs since its start: now - start per GPU (never negative: a GPU reset restarts
    the counter), None when a GPU has no counter."""
    total = 0
    for uuid, start in zip(uuids, start_mj, strict=False):
        now = now_mj.get(uuid)
        if start is None or now is None:
            return None
        total += max(0, now - start)
    return total / 1000.0


def run_writer(cfg: WriterConfig, stop: threading.Event, *, once: bool = False,
               log: Callable[[str], None] = lambda message: None) -> None:
    """Write the file every interval until `stop` (or once); remove it when stopped."""
    dir_fd = check_textfile_dir(cfg.textfile_dir)
    owner = textfile_owner(dir_fd)
    nvml: Nvml | None = None
    try:
        while True:
            if nvml is None:
                try:
                    nvml = open_nvml()
                except NvmlUnavailable as exc:
                    log(f"NVML unavailable: {exc}")
            try:
                metrics = collect(cfg, nvml, time.time())
            except EnergyError as exc:  # NVML went away under us: report it down, retry next time
                log(f"NVML read failed: {exc}")
                if nvml is not None:
                    nvml.close()
                nvml = None
                metrics = collect(cfg, None, time.time())
            atomic_write_at(dir_fd, cfg.file_name, render_node_metrics(metrics).encode(), mode=TEXTFILE_MODE,
                            owner=owner, durable=False)
            if once or stop.wait(cfg.interval_s):
                break
        if not once:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.file_name, dir_fd=dir_fd)
    finally:
        if nvml is not None:
            nvml.close()
        os.close(dir_fd)
