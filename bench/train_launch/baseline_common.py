"""What both hand-written baselines share, so the two rows train on the same config and data and log the
same way: arguments, rank and world from srun, the tiny GPT's config, a step's batch, a step's log line."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from hpc_aidc.node.synthetic import micro_batch_start, synthetic_tokens
from hpc_aidc.spec.train import TrainConfig, parse_train_config


@dataclass(frozen=True)
class Baseline:
    steps: int
    out: str
    rank: int
    world: int
    config: TrainConfig

    def batch(self, step: int) -> Any:
        m, t = self.config.model, self.config.train
        start = micro_batch_start(step, 0, self.rank, t.micro_batch, 1, self.world)
        return synthetic_tokens(self.config.data.seed, start, t.micro_batch, m.seq_len, m.vocab_size)

    def log(self, step: int, loss: Any, t0: float) -> None:
        """Rank 0 appends one JSON line per step (step counted from 1), like hpc-aidc's metrics.jsonl."""
        if self.rank == 0:
            with open(self.out, "a") as fh:
                fh.write(json.dumps({"time": time.time(), "step": step + 1, "loss": float(loss),
                                     "step_time_s": time.monotonic() - t0}) + "\n")


def baseline_from_args() -> Baseline:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n-layer", type=int, default=4)
    args = parser.parse_args()
    config = parse_train_config({"model": {"preset": "tiny", "n_layer": args.n_layer},
                                 "train": {"zero": 1, "max_steps": args.steps}})
    return Baseline(steps=args.steps, out=args.out, rank=int(os.environ["SLURM_PROCID"]),
                    world=int(os.environ["SLURM_NTASKS"]), config=config)
