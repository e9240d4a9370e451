"""Which GPU a rank trains on, from what its task can see (pure functions of a mapping and a count).

Slurm may give every task of a node all the job's GPUs (the default: each rank takes the one at its
node-local rank), or bind each task to its own GPU(s) (--gpus-per-task, --gpu-bind, a site's default):
then every task sees its GPU as device 0, and set_device(local_rank) fails with "invalid device
ordinal"; with several GPUs per task a rank takes local_rank modulo what it sees. LOCAL_RANK (which
DeepSpeed reads as a device number) is set to the same index. CUDA_VISIBLE_DEVICES may hold indices,
GPU-/MIG- UUIDs (or their prefixes)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from hpc_aidc.errors import ConfigError

_TOKEN = re.compile(r"^(\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+)$")


def visible_tokens(env: Mapping[str, str]) -> tuple[str, ...] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: entries up to the first invalid one (CUDA hides the rest,
    "-1" hides all); None when unset (every GPU of the node is visible)."""
    text = env.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    tokens: list[str] = []
    for raw in text.split(","):
        token = raw.strip()
        if not _TOKEN.match(token):
            break
        tokens.append(token)
    return tuple(tokens)


def bound_per_task(env: Mapping[str, str]) -> bool:
    """Whether Slurm gave this task its own GPUs rather than the node's share of the job's."""
    if env.get("SLURM_GPUS_PER_TASK", "").strip() not in ("", "0") or env.get("SLURM_GPU_BIND", "").strip():
        return True
    step = [g for g in env.get("SLURM_STEP_GPUS", "").split(",") if g.strip()]
    visible = visible_tokens(env)
    return visible is not None and len(visible) < len(step)


def select_device(local_rank: int, local_world: int, device_count: int, env: Mapping[str, str]) -> int:
    """The CUDA device index this rank uses among the `device_count` its task sees."""
    seen = env.get("CUDA_VISIBLE_DEVICES", "<unset>")
    if device_count < 1:
        raise ConfigError(
            f"Expected a GPU visible to node-local rank {local_rank}. Got none (CUDA_VISIBLE_DEVICES={seen}). "
            "Ask for GPUs (--gpus-per-node) or train on a CPU partition."
        )
    if device_count >= local_world:
        return local_rank  # the node's GPUs shared out by node-local rank
    if device_count == 1:
        return 0  # this task's own GPU
    if bound_per_task(env):
        # Several GPUs per task: its own (--gpus-per-task: any of them is this rank's alone), or those
        # near its CPUs, shared with the tasks next to it (--gpu-bind=closest: consecutive local ranks
        # sit on the same socket under Slurm's default block distribution, so they take different ones).
        return local_rank % device_count
    raise ConfigError(
        f"Expected at least one GPU per rank: {local_world} ranks on this node see the same {device_count} "
        f"GPUs (CUDA_VISIBLE_DEVICES={seen}). Run one rank per GPU (drop --ntasks-per-node)."
    )
