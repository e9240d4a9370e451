"""A small site profile document for unit tests (the dev cluster's shape)."""

from __future__ import annotations

from typing import Any

from hpc_aidc.site_profile import SiteProfile, parse_site


def site_doc() -> dict[str, Any]:
    return {
        "cluster": {"name": "t", "job_root": "/jobs", "energy_store": "/energy", "scratch": "/scratch",
                    "default_partition": "gpu", "default_qos": "normal", "default_time": "00:30:00",
                    "setup": ["module load cuda"], "admins": ["root"]},
        "partitions": {
            "gpu": {"nodes": 4, "gpus_per_node": 4, "gpu_type": "h100", "cpus_per_node": 8,
                    "mem_per_node_mb": 4000, "max_time": "1-00:00:00"},
            "cpu": {"nodes": 2, "gpus_per_node": 0, "cpus_per_node": 4, "max_time": "01:00:00"},
        },
        "gpu_types": {"h100": {"precisions": ["fp32", "bf16"], "peak_bf16_tflops": 989.0, "memory_gib": 80}},
        "prices": {"currency": "EUR", "gpu_hour": 2.5, "kwh": 0.25, "pue": 1.3, "carbon_g_per_kwh": 300},
        "env": {"NCCL_SOCKET_IFNAME": "ib0"},
    }


def make_site(**cluster_overrides: Any) -> SiteProfile:
    doc = site_doc()
    doc["cluster"].update(cluster_overrides)
    return parse_site(doc, source="test.toml")
