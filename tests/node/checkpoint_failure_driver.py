"""Run the trainer as the only rank (gloo) of job 4242 in a fresh process, optionally with DeepSpeed's
checkpoint writer failing at one tag the way a full filesystem makes it fail:

    python checkpoint_failure_driver.py FOLDER CONFIG_JSON [TAG ENOSPC|EDQUOT|TORCH]

Prints the run's summary as JSON; a stopped run exits as the trainer makes it exit."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # torch.save on a full tmpfs


def _failure(kind: str) -> Exception:
    if kind == "TORCH":
        return RuntimeError(TORCH_FULL)
    code = getattr(errno, kind)
    return OSError(code, os.strerror(code))


def main() -> None:
    folder, config = Path(sys.argv[1]), json.loads(sys.argv[2])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "SLURM_JOB_ID": "4242", "OMP_NUM_THREADS": "1"})
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from hpc_aidc.node.train.deepspeed_patches import skip_inference_shm_kernel
    from hpc_aidc.node.train.run_timing import StartupPhases
    from hpc_aidc.node.train.trainer import Trainer
    from hpc_aidc.spec.train import parse_train_config

    skip_inference_shm_kernel()
    if len(sys.argv) > 3:
        tag, kind = sys.argv[3], sys.argv[4]
        save = TorchCheckpointEngine.save

        def fills_up(self: Any, state_dict: Any, path: str) -> None:
            if tag in str(path):
                Path(path).write_bytes(b"half a checkpoint")  # what a write cut short leaves
                raise _failure(kind)
            save(self, state_dict, path)

        TorchCheckpointEngine.save = fills_up  # type: ignore[method-assign]
    summary = Trainer(parse_train_config(config), folder, rank=0, world=1, local_rank=0).run(StartupPhases())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
