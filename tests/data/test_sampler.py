"""The distributed order: coverage across world sizes, exact resume, fork safety with workers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_aidc.data.dataset import ResumableLoader, ShardedDataset, ShardedSampler
from hpc_aidc.errors import DataError

N, SHARD = 203, 16


def _epoch(world: int, epoch: int = 0, drop_last: bool = False, seed: int = 7) -> list[list[int]]:
    lists = []
    for rank in range(world):
        s = ShardedSampler(num_samples=N, shard_samples=SHARD, rank=rank, world_size=world, seed=seed,
                           drop_last=drop_last)
        s.set_epoch(epoch)
        lists.append(list(s))
    return lists


@pytest.mark.parametrize("world", range(1, 9))
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(world: int, drop_last: bool) -> None:
    for epoch in (0, 1):
        lists = _epoch(world, epoch, drop_last)
        assert len({len(x) for x in lists}) == 1  # equal steps on every rank
        counts = Counter(i for x in lists for i in x)
        pad = len(lists[0]) * world - N
        if drop_last:
            assert max(counts.values()) == 1 and N - len(counts) == N % world
        else:
            assert set(counts) == set(range(N)) and sum(counts.values()) - N == pad < world
    assert _epoch(world, 0) != _epoch(world, 1) or world > N  # the order changes between epochs


def test_rank_lists_are_shard_affine() -> None:
    lists = _epoch(4)
    shards_per_rank = [len({i // SHARD for i in x}) for x in lists]
    assert max(shards_per_rank) <= -(-N // SHARD) // 4 + 2


def _run(samplers: list[ShardedSampler], steps: int | None) -> tuple[list[list[int]], dict]:
    """Each rank consumes `steps` samples (all when None); returns what they consumed and the state."""
    got = []
    for s in samplers:
        it = iter(s)
        got.append([next(it) for _ in range(steps)] if steps is not None else list(it))
    return got, samplers[0].state_dict()


def _samplers(world: int, state: dict | None = None, drop_last: bool = False) -> list[ShardedSampler]:
    out = []
    for rank in range(world):
        s = ShardedSampler(num_samples=N, shard_samples=SHARD, rank=rank, world_size=world, seed=7,
                           drop_last=drop_last)
        s.set_epoch(3)
        if state is not None:
            s.load_state_dict(state)
        out.append(s)
    return out


@pytest.mark.parametrize("cut", [0, 1, 10, 25])
def test_resume_same_world_reproduces_order(cut: int) -> None:
    full, _ = _run(_samplers(4), None)
    first, state = _run(_samplers(4), cut)
    rest, _ = _run(_samplers(4, state), None)
    assert [a + b for a, b in zip(first, rest, strict=True)] == full


@pytest.mark.parametrize(("worlds", "cuts"), [((4, 2), (10,)), ((3, 5), (7,)), ((8, 1), (3,)),
                                              ((2, 6, 3), (20, 5)), ((5, 5, 7), (4, 9))])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_with_other_world_sizes(worlds: tuple[int, ...], cuts: tuple[int, ...], drop_last: bool) -> None:
    seen: list[int] = []
    state = None
    for world, cut in zip(worlds, (*cuts, None), strict=True):
        got, state = _run(_samplers(world, state, drop_last), cut)
        seen += [i for x in got for i in x]
    counts = Counter(seen)
    final_world = worlds[-1]
    if drop_last:
        assert max(counts.values()) == 1 and N - len(counts) < final_world
    else:
        assert set(counts) == set(range(N)) and len(seen) - N < final_world
    assert state is not None and state["epoch"] == 3


def test_state_for_other_dataset_is_refused() -> None:
    _, state = _run(_samplers(2), 3)
    other = ShardedSampler(num_samples=N + 1, shard_samples=SHARD, rank=0, world_size=2)
    with pytest.raises(DataError, match="Expected the checkpoint's dataset"):
        other.load_state_dict(state)


def test_loader_workers_resume_and_fork_safety(packed: tuple[Path, np.ndarray]) -> None:
    store, ref = packed
    ds = ShardedDataset(store)
    ds[0]  # open handles in the parent before the workers fork: each worker must open its own

    def batches(workers: int, state: dict | None = None, stop: int | None = None) -> tuple[list, dict]:
        sampler = ShardedSampler(ds, rank=1, world_size=2, seed=3)
        loader = ResumableLoader(ds, sampler, batch_size=8, num_workers=workers)
        if state:
            loader.load_state_dict(state)
        out = []
        for b in loader:
            out.append(b)
            if stop is not None and len(out) == stop:
                break
        return out, loader.state_dict()

    full, _ = batches(0)
    with_workers, _ = batches(2)
    assert len(full) == len(with_workers) == (390 // 2) // 8
    for a, b in zip(full, with_workers, strict=True):
        assert torch.equal(a, b)
    head, state = batches(2, stop=5)
    tail, _ = batches(2, state)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, full, strict=True))
    order = list(ShardedSampler(ds, rank=1, world_size=2, seed=3))
    np.testing.assert_array_equal(full[0].numpy(), ref[order[:8]])
