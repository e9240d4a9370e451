"""Validation inside a training job ([eval] every = K): the loss and perplexity of the model on held-out
data, computed on every rank without gradients and averaged over all of them.

The held-out set is fixed for the whole run (and its requeues): for a Zarr store, the samples
`data.sampler.heldout_ids` leaves out of training, cut into equal contiguous blocks per data-parallel
rank; for synthetic data, generator samples far past any training run's. Every validation sees the same
batches, so its losses compare across steps, runs and sweep trials."""

from __future__ import annotations

import math
from typing import Any

import torch

from hpc_aidc.spec.train import TrainConfig

# Synthetic samples used for validation start here; training reads samples from 0 up.
SYNTHETIC_EVAL_START = 1 << 40


def heldout_batches(config: TrainConfig, dp_rank: int, dp: int) -> list[torch.Tensor]:
    """This data-parallel rank's validation micro-batches ([micro_batch, seq_len + 1] int64, on the host):
    `eval.batches` of them, or as many whole ones as the held-out split gives every rank."""
    micro, want = config.train.micro_batch, config.eval.batches
    if config.data.kind != "zarr":
        from hpc_aidc.node.synthetic import synthetic_tokens

        m = config.model
        first = SYNTHETIC_EVAL_START + dp_rank * want * micro
        return [synthetic_tokens(config.data.seed, first + i * micro, micro, m.seq_len, m.vocab_size)
                for i in range(want)]
    from hpc_aidc.data.dataset import ShardedDataset, collate
    from hpc_aidc.data.sampler import heldout_ids, validation_batches_per_rank
    from hpc_aidc.data.spec import SAMPLES

    # A reader of its own: the training loader's is used by the prefetch thread meanwhile.
    dataset = ShardedDataset(config.data.path, arrays=(SAMPLES,))
    count = validation_batches_per_rank(len(dataset), config.eval.holdout, dp, micro, want)
    ids = heldout_ids(len(dataset), config.eval.holdout)
    per_rank = len(ids) // dp
    mine = ids[dp_rank * per_rank: dp_rank * per_rank + count * micro]
    return [collate(dataset.__getitems__(mine[i * micro:(i + 1) * micro])).to(torch.int64) for i in range(count)]


def validation_loss(engine: Any, batches: list[torch.Tensor], device: torch.device, pipeline: bool) -> float:
    """Collective: the mean next-token loss over every rank's held-out batches. The model is put back in
    training mode afterwards."""
    import torch.distributed as dist

    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        if pipeline:
            # All micro-batches in one pass through the stages; every stage gets the mean loss back.
            pairs = iter([(b[:, :-1].to(device), b[:, 1:].to(device)) for b in batches])
            loss = engine.eval_batch(data_iter=pairs, num_micro_batches=len(batches))
            total[0] += torch.as_tensor(loss).to(device=device, dtype=torch.float64).reshape(()) * len(batches)
        else:
            engine.eval()
            try:
                for batch in batches:
                    total[0] += engine(batch.to(device)).detach().double()
            finally:
                engine.train()
        total[1] += len(batches)
    dist.all_reduce(total)
    loss_sum, count = total.tolist()
    return float(loss_sum / count)


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
