"""A deterministic synthetic token stream: sample i depends only on (seed, i), so any rank can produce
any slice of it and a resumed run sees exactly the samples an uninterrupted one would.

Each sequence is an arithmetic progression modulo the vocabulary: learnable, so the loss falls."""

from __future__ import annotations

import torch


def synthetic_tokens(seed: int, start: int, count: int, seq_len: int, vocab: int) -> torch.Tensor:
    """Samples [start, start+count) as a [count, seq_len+1] int64 tensor."""
    idx = torch.arange(start, start + count, dtype=torch.int64)
    mixed = (idx * 2654435761 + seed * 40503) % 1000003
    first = mixed % vocab
    step = 1 + (mixed // vocab) % 7
    positions = torch.arange(seq_len + 1, dtype=torch.int64)
    return (first[:, None] + step[:, None] * positions[None, :]) % vocab


def micro_batch_start(step: int, micro: int, dp_rank: int, micro_batch: int, grad_accum: int, dp: int) -> int:
    """First sample of one rank's micro-batch: steps take consecutive global batches."""
    global_batch = micro_batch * grad_accum * dp
    return step * global_batch + micro * micro_batch * dp + dp_rank * micro_batch
