"""The hand-written baseline: plain torch DDP (gloo on CPU, NCCL on GPU) of the same GPT and the same
synthetic data as `hpcai submit train`, launched by a plain sbatch + srun script. One JSON line per step."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from baseline_common import baseline_from_args
from torch.nn.parallel import DistributedDataParallel

from hpc_aidc.node.model import GPT


def main() -> None:
    run = baseline_from_args()
    dist.init_process_group("gloo", rank=run.rank, world_size=run.world)
    config = run.config
    torch.manual_seed(config.train.seed)
    model = DistributedDataParallel(GPT(config.model))
    optim = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr)
    for step in range(run.steps):
        t0 = time.monotonic()
        loss = model(run.batch(step))
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip)
        optim.step()
        run.log(step, loss, t0)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
