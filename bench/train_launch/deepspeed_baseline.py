"""The control: the same DeepSpeed ZeRO-1 engine, config, model and data as `hpcai submit train`, in a plain
loop launched by the same hand-written sbatch + srun script as the DDP baseline, with none of hpc-aidc's
launcher or trainer (no submitit, checkpoint logic, signal handling or per-step reductions). Next to the
other two rows it splits the gap to DDP into what DeepSpeed's ZeRO-1 costs and what hpc-aidc adds.
One JSON line per step, like the DDP baseline."""

from __future__ import annotations

import argparse
import json
import os
import time

import deepspeed
import torch

from hpc_aidc.node.model import GPT
from hpc_aidc.node.synthetic import micro_batch_start, synthetic_tokens
from hpc_aidc.node.train import _import_muon_without_compiling, _skip_inference_shm_kernel
from hpc_aidc.render.deepspeed_config import deepspeed_config
from hpc_aidc.spec.train import parse_train_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n-layer", type=int, default=4)
    args = parser.parse_args()
    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0")
    # The two start-up workarounds hpc-aidc applies (no shm kernel build, no Inductor at import), so the
    # start-up column compares launchers rather than a minutes-long JIT build.
    _skip_inference_shm_kernel()
    _import_muon_without_compiling()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    config = parse_train_config({"model": {"preset": "tiny", "n_layer": args.n_layer},
                                 "train": {"zero": 1, "max_steps": args.steps}})
    m, t = config.model, config.train
    torch.manual_seed(t.seed)
    model = GPT(m)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=deepspeed_config(config, world))
    for step in range(args.steps):
        t0 = time.monotonic()
        start = micro_batch_start(step, 0, rank, t.micro_batch, 1, world)
        loss = engine(synthetic_tokens(config.data.seed, start, t.micro_batch, m.seq_len, m.vocab_size))
        engine.backward(loss)
        engine.step()
        if rank == 0:
            with open(args.out, "a") as fh:
                fh.write(json.dumps({"time": time.time(), "step": step + 1, "loss": float(loss),
                                     "step_time_s": time.monotonic() - t0}) + "\n")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
