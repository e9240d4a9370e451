"""Node metrics in Prometheus's text exposition format, for node_exporter's textfile collector (pure).

Names follow dcgm-exporter where it has one (DCGM_FI_DEV_*, labels gpu, UUID, device, Hostname; the
Slurm job id as `hpc_job`, dcgm-exporter's label for it, never `job`, which Prometheus sets to the scrape
job); what dcgm-exporter has no name for is `hpcai_*` in base units. dcgm-exporter's `modelName` label
(camelCase, which promtool's lint refuses) is `model_name` on the one `hpcai_gpu_info` series per GPU. MAPPING is the
documented table (monitoring/README.md is generated from it).

Cardinality stays bounded by what the node has: the per-GPU series carry no job label (they live as long
as the GPU), and each running job adds one series per metric plus one `hpcai_gpu_job_info` per GPU it
holds. A job's series are written only while it runs: the next file after its end leaves them out, and
Prometheus marks them stale on its next scrape."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMetrics:
    index: int
    uuid: str
    name: str
    pci: str
    power_w: float
    energy_mj: int | None        # NVML's total energy counter (since driver load)
    util_gpu: float
    util_mem: float
    mem_used_mib: float
    temp_c: float
    sm_mhz: float
    throttle: int                # NVML clocks-event (throttle) reasons bitmask


@dataclass(frozen=True)
class JobMetrics:
    job_id: str
    user: str
    account: str
    gpu_uuids: tuple[str, ...]   # the job's GPUs on this node
    energy_j: float | None       # of those GPUs since the job started on this node (None: no counter)
    power_w: float


@dataclass(frozen=True)
class NodeMetrics:
    node: str
    time_s: float
    nvml_up: bool
    simulated: bool
    gpus: Sequence[GpuMetrics]
    jobs: Sequence[JobMetrics]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str   # gauge | counter
    unit: str
    help: str
    dcgm: str   # the dcgm-exporter field it corresponds to, or "" (hpc-aidc's own)


GPU_LABELS = ("gpu", "UUID", "device", "Hostname")
JOB_LABELS = ("hpc_job", "user", "account", "Hostname")

MAPPING: tuple[Metric, ...] = (
    Metric("DCGM_FI_DEV_POWER_USAGE", "gauge", "W", "GPU power draw (NVML nvmlDeviceGetPowerUsage).",
           "DCGM_FI_DEV_POWER_USAGE"),
    Metric("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "gauge", "mJ",
           "GPU energy counter since the driver loaded (NVML nvmlDeviceGetTotalEnergyConsumption); it only "
           "grows, use rate()/increase(). Typed gauge: a counter without _total fails promtool's lint.",
           "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
    Metric("DCGM_FI_DEV_GPU_UTIL", "gauge", "%", "GPU utilisation (NVML utilization.gpu).", "DCGM_FI_DEV_GPU_UTIL"),
    Metric("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "%", "GPU memory utilisation (NVML utilization.memory).",
           "DCGM_FI_DEV_MEM_COPY_UTIL"),
    Metric("DCGM_FI_DEV_FB_USED", "gauge", "MiB", "GPU framebuffer memory used.", "DCGM_FI_DEV_FB_USED"),
    Metric("DCGM_FI_DEV_GPU_TEMP", "gauge", "C", "GPU temperature.", "DCGM_FI_DEV_GPU_TEMP"),
    Metric("DCGM_FI_DEV_SM_CLOCK", "gauge", "MHz", "SM clock.", "DCGM_FI_DEV_SM_CLOCK"),
    Metric("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge", "bitmask",
           "NVML clocks-event (throttle) reasons: 0x4 sw power cap, 0x8 hw slowdown, 0x20 sw thermal, "
           "0x40 hw thermal, 0x80 hw power brake.", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"),
    Metric("hpcai_gpu_info", "gauge", "1", "1 per GPU, with its model and PCI bus id (dcgm-exporter's "
           "modelName label).", ""),
    Metric("hpcai_gpu_job_info", "gauge", "1",
           "1 for each GPU a running Slurm job holds on this node (join GPU series on Hostname, gpu).", ""),
    Metric("hpcai_job_energy_joules_total", "counter", "J",
           "GPU energy of the job on this node since it started (NVML counters, the same the job's energy "
           "record uses).", ""),
    Metric("hpcai_job_power_watts", "gauge", "W", "GPU power of the job on this node.", ""),
    Metric("hpcai_job_gpus", "gauge", "1", "GPUs the job holds on this node.", ""),
    Metric("hpcai_node_nvml_up", "gauge", "1", "1 when NVML answered on this node at the last update.", ""),
    Metric("hpcai_node_gpus_simulated", "gauge", "1", "1 when the GPUs are the dev cluster's simulated NVML.", ""),
    Metric("hpcai_node_metrics_updated_timestamp_seconds", "gauge", "s",
           "When the writer last wrote this file (alert when it falls behind).", ""),
)
_BY_NAME = {m.name: m for m in MAPPING}


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render_node_metrics(m: NodeMetrics) -> str:
    series: dict[str, list[str]] = {metric.name: [] for metric in MAPPING}

    def add(name: str, labels: Sequence[tuple[str, str]], value: float) -> None:
        series[name].append(f"{name}{_labels(labels)} {_number(value)}")

    by_uuid = {g.uuid: g for g in m.gpus}
    for g in m.gpus:
        labels = (("gpu", str(g.index)), ("UUID", g.uuid), ("device", f"nvidia{g.index}"), ("Hostname", m.node))
        add("hpcai_gpu_info", (*labels, ("model_name", g.name), ("pci_bus_id", g.pci)), 1)
        for name, value in (("DCGM_FI_DEV_POWER_USAGE", g.power_w), ("DCGM_FI_DEV_GPU_UTIL", g.util_gpu),
                            ("DCGM_FI_DEV_MEM_COPY_UTIL", g.util_mem), ("DCGM_FI_DEV_FB_USED", g.mem_used_mib),
                            ("DCGM_FI_DEV_GPU_TEMP", g.temp_c), ("DCGM_FI_DEV_SM_CLOCK", g.sm_mhz)):
            if not math.isnan(value):
                add(name, labels, value)
        if g.energy_mj is not None:
            add("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", labels, g.energy_mj)
        add("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", labels, g.throttle)
    for job in m.jobs:
        labels = (("hpc_job", job.job_id), ("user", job.user), ("account", job.account), ("Hostname", m.node))
        for uuid in job.gpu_uuids:
            gpu = by_uuid.get(uuid)
            if gpu is not None:
                add("hpcai_gpu_job_info", (("gpu", str(gpu.index)), ("UUID", uuid), *labels), 1)
        if job.energy_j is not None:
            add("hpcai_job_energy_joules_total", labels, round(job.energy_j, 3))
        add("hpcai_job_power_watts", labels, round(job.power_w, 3))
        add("hpcai_job_gpus", labels, len(job.gpu_uuids))
    node = (("Hostname", m.node),)
    add("hpcai_node_nvml_up", node, 1 if m.nvml_up else 0)
    add("hpcai_node_gpus_simulated", node, 1 if m.simulated else 0)
    add("hpcai_node_metrics_updated_timestamp_seconds", node, round(m.time_s, 3))
    out: list[str] = []
    for name, lines in series.items():
        if not lines:
            continue
        metric = _BY_NAME[name]
        out += [f"# HELP {name} {metric.help} Unit: {metric.unit}.", f"# TYPE {name} {metric.kind}", *lines]
    return "\n".join(out) + "\n"


def mapping_markdown() -> str:
    """The table of monitoring/README.md: every metric, its unit, labels and dcgm-exporter counterpart."""
    rows = ["| metric | type | unit | labels | dcgm-exporter | meaning |", "|---|---|---|---|---|---|"]
    for metric in MAPPING:
        if metric.name.startswith("DCGM_"):
            labels = ", ".join(GPU_LABELS)
        elif metric.name == "hpcai_gpu_info":
            labels = ", ".join(GPU_LABELS) + ", model_name, pci_bus_id"
        elif metric.name == "hpcai_gpu_job_info":
            labels = "gpu, UUID, " + ", ".join(JOB_LABELS)
        elif metric.name.startswith("hpcai_job_"):
            labels = ", ".join(JOB_LABELS)
        else:
            labels = "Hostname"
        rows.append(f"| `{metric.name}` | {metric.kind} | {metric.unit} | {labels} | "
                    f"{'same name' if metric.dcgm else '(none: hpc-aidc)'} | {metric.help} |")
    return "\n".join(rows) + "\n"
