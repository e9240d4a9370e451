"""Environment capture, once per job run: what the runtime loaded (CUDA and NCCL as torch sees them, the
driver and GPUs as NVML reports them), package versions, Python, nodes, the resolved config, the git state
recorded at submission, and the variables -> <job dir>/environment.json: those on the allow-list with
their values, secrets still redacted, every other one by name only (render/environment.py).

Written by the job's task 0 only (rank 0 on node 0), at every start of the job: a requeued run may land
on other nodes, and the file says where the latest one ran. A capture problem never fails the job: it is
printed to the task's log and the job goes on.

The git half runs at submission on the login node (scheduler/submit_context.py), where the user's checkout is;
compute nodes may not have it. It travels to the job in $HPCAI_SUBMIT_CONTEXT."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpc_aidc.formats.environment_record import ENV_FILE, write_environment
from hpc_aidc.formats.job_env import SUBMIT_CONTEXT_ENV
from hpc_aidc.render.environment import SCHEMA, capture_env, redact_argv

# distribution name -> module whose __version__ is read when it is loaded
PACKAGES: dict[str, str] = {"torch": "torch", "deepspeed": "deepspeed", "transformers": "transformers",
                            "zarr": "zarr", "numpy": "numpy", "hpc-aidc": "hpc_aidc", "submitit": "submitit",
                            "nvidia-ml-py": "pynvml"}


def package_versions(packages: Mapping[str, str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (importlib.metadata, as the job's sys.path finds them); None when absent."""
    out: dict[str, str | None] = {}
    for dist in packages:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def loaded_versions(packages: Mapping[str, str] = PACKAGES) -> dict[str, str]:
    """__version__ of the modules this process has imported (the code that really runs)."""
    out: dict[str, str] = {}
    for dist, module_name in packages.items():
        module = sys.modules.get(module_name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is not None:
            out[dist] = str(version)
    return out


def cuda_runtime() -> dict[str, Any]:
    """CUDA and NCCL versions as the loaded torch reports them; None with a reason when unknown."""
    try:
        import torch
    except ImportError:
        reason = "torch is not installed"
        return {"cuda": None, "cuda_reason": reason, "nccl": None, "nccl_reason": reason, "cuda_available": False}
    out: dict[str, Any] = {"cuda": torch.version.cuda, "cuda_available": bool(torch.cuda.is_available())}
    if out["cuda"] is None:
        out["cuda_reason"] = "torch was built without CUDA"
    if not out["cuda_available"]:
        out.update(nccl=None, nccl_reason="CUDA is not available")
        return out
    try:
        nccl = torch.cuda.nccl.version()  # type: ignore[no-untyped-call]
        out["nccl"] = ".".join(str(v) for v in nccl) if isinstance(nccl, tuple) else str(nccl)
    except Exception as exc:  # torch raises various errors when NCCL is missing from its build
        out.update(nccl=None, nccl_reason=f"{type(exc).__name__}: {exc}")
    return out


def nvml_facts(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """({"driver", "nvml"} or None with a reason, [{"index", "name", "uuid"}]) of the job's GPUs: those
    Slurm gave it (none for a job without GPUs); outside Slurm, all of the machine's."""
    from hpc_aidc.monitor.gpus import job_gpus
    from hpc_aidc.monitor.nvml import NvmlUnavailable, open_nvml

    try:
        nvml = open_nvml(environ)
    except NvmlUnavailable as exc:
        return {"driver": None, "driver_reason": str(exc)}, []
    try:
        found = job_gpus(environ)
        tokens = found[0] if found else (() if "SLURM_JOB_ID" in environ else None)
        devices, _ = nvml.resolve(tokens)
        gpus = [{"index": d.index, "name": d.name, "uuid": d.uuid} for d, _ in devices]
        return {"driver": nvml.driver, "nvml": nvml.nvml_version, "simulated": nvml.simulated}, gpus
    finally:
        nvml.close()


def collect(environ: Mapping[str, str], config: Any, job_id: str) -> dict[str, Any]:
    """The whole record for this process's job (I/O: imports, NVML, the clock)."""
    from hpc_aidc.node.slurm_env import expand_hostlist

    try:
        submit = json.loads(environ.get(SUBMIT_CONTEXT_ENV, "null"))
    except json.JSONDecodeError:
        submit = None
    if not isinstance(submit, dict):
        submit = {"git": {"commit": None, "dirty": None, "root": None,
                          "reason": "not submitted by hpcai (no submit context)"}}
    command = submit.get("command")
    if isinstance(command, list):  # redacted at submission already; again here, for an older hpcai's context
        submit["command"] = redact_argv([str(arg) for arg in command])
    driver, gpus = nvml_facts(environ)
    variables = {k: v for k, v in environ.items() if k != SUBMIT_CONTEXT_ENV}
    return {
        "schema": SCHEMA,
        "job_id": job_id,
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": {"version": sys.version.split()[0], "implementation": sys.implementation.name,
                   "executable": sys.executable},
        "packages": package_versions(),
        "loaded": loaded_versions(),
        "runtime": {**cuda_runtime(), **driver},
        "nodes": expand_hostlist(environ.get("SLURM_JOB_NODELIST", "")),
        "gpus": gpus,
        "git": submit.get("git"),
        "submit": {k: v for k, v in submit.items() if k != "git"},
        "config": config,
        "environment": capture_env(variables),
    }


def job_id_of(environ: Mapping[str, str]) -> str:
    """The job's id as Slurm shows it: 123, or 120_5 for an array task; "local" outside Slurm."""
    array = environ.get("SLURM_ARRAY_JOB_ID", "")
    if array:
        return f"{array}_{environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return environ.get("SLURM_JOB_ID", "local")


def is_first_task(environ: Mapping[str, str]) -> bool:
    """Task 0 of the job (rank 0 on node 0); outside srun, the one process there is."""
    return environ.get("SLURM_PROCID", "0") == "0" and environ.get("SLURM_NODEID", "0") == "0"


def capture_in_task(config: Any, folder: Path | None = None, environ: Mapping[str, str] | None = None,
                    first: bool | None = None, name: str = ENV_FILE) -> None:
    """Called at the start of every hpcai task function: task 0 (`first`, by default from the Slurm
    variables) writes `name` (environment.json) into the job directory (submitit's folder when `folder`
    is not given); the other tasks return at once."""
    env = os.environ if environ is None else environ
    if not (is_first_task(env) if first is None else first):
        return
    try:
        if folder is None:
            import submitit

            folder = submitit.JobEnvironment().paths.folder
        write_environment(folder, collect(env, config, job_id_of(env)), name)
    except Exception as exc:  # the record is a by-product: never fail the user's job over it
        print(f"hpcai: environment capture failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
