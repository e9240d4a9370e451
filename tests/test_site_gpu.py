"""Site profile keys for GPU training: CPUs per GPU, srun CPU/GPU binding, peaks per precision, bf16-capable
GPU types, the rendezvous port range; each invalid value refused with one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from site_fixture import site_doc

from hpc_aidc.errors import SiteProfileError
from hpc_aidc.site_profile import DEFAULT_RENDEZVOUS_PORTS, parse_port_range, parse_site


def test_gpu_training_keys() -> None:
    doc = site_doc()
    doc["cluster"]["rendezvous_ports"] = "21000-21999"
    doc["partitions"]["gpu"].update(cpus_per_gpu=2, cpu_bind="cores", gpu_bind="closest")
    doc["gpu_types"]["h100"].update(peak_tf32_tflops=494.0, peak_fp32_tflops=67)
    site = parse_site(doc)
    gpu, h100 = site.partitions["gpu"], site.gpu_types["h100"]
    assert (gpu.cpus_per_gpu, gpu.cpu_bind, gpu.gpu_bind) == (2, "cores", "closest")
    assert site.rendezvous_ports == (21000, 21999)
    assert h100.bf16 and h100.peak_tflops("bf16") == 989.0 and h100.peak_tflops("fp16") == 989.0
    assert h100.peak_tflops("fp32") == 494.0 and h100.peak_tflops("fp32", tf32=False) == 67.0


def test_defaults() -> None:
    site = parse_site(site_doc())
    assert site.rendezvous_ports == DEFAULT_RENDEZVOUS_PORTS
    assert site.partitions["gpu"].default_cpus_per_gpu == 2  # 8 CPUs / 4 GPUs
    assert site.partitions["cpu"].default_cpus_per_gpu == 1
    assert site.gpu_types["h100"].peak_tflops("fp32") is None  # no fp32 peak in the profile: no MFU
    # a user may move the ports (HPCAI_RENDEZVOUS_PORTS), as other [cluster] keys
    assert parse_site(site_doc(), environ={"HPCAI_RENDEZVOUS_PORTS": "23000-23999"}).rendezvous_ports == (23000, 23999)
    assert parse_port_range([24000, 24999]) == (24000, 24999)


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: d["partitions"]["gpu"].update(cpus_per_gpu=3), "cpus_per_gpu x gpus_per_node <= cpus_per_node (8)"),
    (lambda d: d["partitions"]["gpu"].update(cpus_per_gpu=0), "partitions.gpu.cpus_per_gpu >= 1"),
    (lambda d: d["partitions"]["gpu"].update(cpu_bind="cores; rm -rf /"), "an srun --cpu-bind value"),
    (lambda d: d["partitions"]["gpu"].update(gpu_bind=1), "an srun --gpu-bind value"),
    (lambda d: d["partitions"]["gpu"].update(mem_per_node_mb=-1), "mem_per_node_mb >= 0"),
    (lambda d: d["gpu_types"]["h100"].update(precisions=["bf16", "int4"]), "precisions as a list from"),
    (lambda d: d["gpu_types"]["h100"].update(peak_bf16_tflops=0), "peak_bf16_tflops > 0"),
    (lambda d: d["gpu_types"]["h100"].update(peak_tf32_tflops="fast"), "peak_tf32_tflops to be a int or float"),
    (lambda d: d["cluster"].update(rendezvous_ports="30000-20000"), "1024 <= LO < HI <= 65535"),
    (lambda d: d["cluster"].update(rendezvous_ports="ports"), "cluster.rendezvous_ports as \"LO-HI\""),
    (lambda d: d["cluster"].update(rendezvous_ports=[80, 90]), "outside Linux's ephemeral ports 32768-60999"),
])
def test_invalid_values_are_refused(mutate: Callable[[dict[str, Any]], None], needle: str) -> None:
    doc = site_doc()
    mutate(doc)
    with pytest.raises(SiteProfileError) as err:
        parse_site(doc, source="x.toml")
    message = str(err.value)
    assert needle in message and "x.toml" in message and "\n" not in message
