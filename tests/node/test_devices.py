"""Each rank's GPU from what its task sees (pure): shared views pick by node-local rank, per-task binding
(--gpus-per-task, --gpu-bind, a site default) gives each task its device 0, UUIDs count like indices, and
too few GPUs for the ranks is a clear error."""

from __future__ import annotations

import pytest

from hpc_aidc.errors import ConfigError
from hpc_aidc.node.devices import bound_per_task, select_device, visible_tokens

UUIDS = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6,GPU-2f3a0c61-1111-2222-3333-444455556666"


@pytest.mark.parametrize(("env", "local_rank", "local_world", "count", "device"), [
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 2, 4, 4, 2),               # the node's GPUs shared out
    ({}, 3, 4, 8, 3),                                                 # nothing set: all of the node's
    ({"CUDA_VISIBLE_DEVICES": "5"}, 3, 4, 1, 0),                      # bound: one GPU per task
    ({"CUDA_VISIBLE_DEVICES": UUIDS, "SLURM_GPUS_PER_TASK": "2"}, 3, 4, 2, 1),  # 2 own GPUs per task, by UUID
    ({"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_GPU_BIND": "map_gpu:2,3"}, 1, 4, 2, 1),
    ({"CUDA_VISIBLE_DEVICES": "MIG-GPU-aaaa/1/0"}, 1, 2, 1, 0),       # a MIG slice per task
    ({"CUDA_VISIBLE_DEVICES": "4,5", "SLURM_STEP_GPUS": "4,5,6,7"}, 1, 4, 2, 1),  # sees fewer than the step has
    # --gpu-bind=closest on 2 sockets x 4 GPUs: ranks 4-7 share socket 1's GPUs and take one each
    *(({"CUDA_VISIBLE_DEVICES": "4,5,6,7", "SLURM_GPU_BIND": "closest"}, r, 8, 4, r - 4) for r in range(4, 8)),
])
def test_the_device_is_what_the_task_sees(env: dict[str, str], local_rank: int, local_world: int, count: int,
                                          device: int) -> None:
    assert select_device(local_rank, local_world, count, env) == device


def test_too_few_gpus_for_the_ranks_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"Expected at least one GPU per rank: 4 ranks on this node see the same 2"):
        select_device(3, 4, 2, {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_STEP_GPUS": "0,1"})
    with pytest.raises(ConfigError, match=r"Expected a GPU visible to node-local rank 0. Got none"):
        select_device(0, 1, 0, {"CUDA_VISIBLE_DEVICES": "-1"})


def test_visible_tokens_follow_cuda() -> None:
    assert visible_tokens({}) is None
    assert visible_tokens({"CUDA_VISIBLE_DEVICES": UUIDS}) == tuple(UUIDS.split(","))
    assert visible_tokens({"CUDA_VISIBLE_DEVICES": "0,2,-1,1"}) == ("0", "2")  # CUDA stops at the invalid one
    assert visible_tokens({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert bound_per_task({"SLURM_GPUS_PER_TASK": "1"}) and not bound_per_task({"SLURM_GPUS_PER_TASK": "0"})
    assert not bound_per_task({"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_STEP_GPUS": "0,1"})
