"""The control: the same DeepSpeed ZeRO-1 engine, config, model and data as `hpcai submit train`, in a plain
loop launched by the same hand-written sbatch + srun script as the DDP baseline, with none of hpc-aidc's
launcher or trainer (no submitit, checkpoint logic, signal handling or per-step reductions). Next to the
other two rows it splits the gap to DDP into what DeepSpeed's ZeRO-1 costs and what hpc-aidc adds.
One JSON line per step, like the DDP baseline."""

from __future__ import annotations

import os
import time

import deepspeed
import torch
from baseline_common import baseline_from_args

from hpc_aidc.node.model import GPT
from hpc_aidc.node.train.deepspeed_patches import import_muon_without_compiling, skip_inference_shm_kernel
from hpc_aidc.render.deepspeed_config import deepspeed_config


def main() -> None:
    run = baseline_from_args()
    os.environ.update(RANK=str(run.rank), WORLD_SIZE=str(run.world), LOCAL_RANK="0")
    # The two start-up workarounds hpc-aidc applies (no shm kernel build, no Inductor at import), so the
    # start-up column compares launchers rather than a minutes-long JIT build.
    skip_inference_shm_kernel()
    import_muon_without_compiling()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(run.config.train.seed)
    model = GPT(run.config.model)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=deepspeed_config(run.config, run.world))
    for step in range(run.steps):
        t0 = time.monotonic()
        loss = engine(run.batch(step))
        engine.backward(loss)
        engine.step()
        run.log(step, loss, t0)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
