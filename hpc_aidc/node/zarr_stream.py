"""Training batches from a packed Zarr token store (`data.kind = "zarr"`), with the loader's exact
position in every checkpoint: a resumed run continues the epoch where it stopped, even on another
world size (the rest of the epoch is re-partitioned by the sampler)."""

from __future__ import annotations

from typing import Any

import torch

from hpc_aidc.errors import ConfigError
from hpc_aidc.spec.train import TrainConfig


class ZarrTokenStream:
    def __init__(self, config: TrainConfig, rank: int, world_size: int) -> None:
        from hpc_aidc.data.dataset import build_loader

        # With [eval] on, the held-out samples (node.validation) are left out of every epoch.
        holdout = config.eval.holdout if config.eval.every else 0.0
        self.loader = build_loader(config.data.path, config.train.micro_batch, seed=config.data.seed,
                                   num_workers=0, rank=rank, world_size=world_size, holdout=holdout)
        seq = self.loader.loader.dataset[0].shape[-1]
        if seq != config.model.seq_len + 1:
            raise ConfigError(
                f"Expected model.seq_len = {seq - 1} (the dataset's sequences are {seq} tokens: inputs plus the "
                f"shifted target). Got model.seq_len = {config.model.seq_len}. Set it in the config."
            )
        self.epoch = 0
        self._iter: Any = None

    def next_batch(self) -> torch.Tensor:
        while True:
            if self._iter is None:
                self.loader.sampler.set_epoch(self.epoch)
                self._iter = iter(self.loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                self.epoch += 1
                self._iter = None
                continue
            tokens = batch if isinstance(batch, torch.Tensor) else batch["samples"]
            return tokens.to(torch.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.loader.load_state_dict(state["loader"])
        self._iter = None
