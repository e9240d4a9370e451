"""The hand-written baseline: plain torch DDP (gloo on CPU, NCCL on GPU) of the same GPT and the same
synthetic data as `hpcai submit train`, launched by a plain sbatch + srun script. One JSON line per step."""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hpc_aidc.node.model import GPT
from hpc_aidc.node.synthetic import micro_batch_start, synthetic_tokens
from hpc_aidc.spec.train import parse_train_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n-layer", type=int, default=4)
    args = parser.parse_args()
    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    config = parse_train_config({"model": {"preset": "tiny", "n_layer": args.n_layer}})
    m, t = config.model, config.train
    torch.manual_seed(t.seed)
    model = DistributedDataParallel(GPT(m))
    optim = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr)
    for step in range(args.steps):
        t0 = time.monotonic()
        start = micro_batch_start(step, 0, rank, t.micro_batch, 1, world)
        loss = model(synthetic_tokens(config.data.seed, start, t.micro_batch, m.seq_len, m.vocab_size))
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip)
        optim.step()
        if rank == 0:
            with open(args.out, "a") as fh:
                fh.write(json.dumps({"time": time.time(), "step": step + 1, "loss": float(loss),
                                     "step_time_s": time.monotonic() - t0}) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
