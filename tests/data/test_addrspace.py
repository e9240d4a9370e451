"""The shared address range: shards side by side in one mapping give the same samples as reading each
shard on its own, also in a forked process, and layouts that cannot be mapped fall back."""

from __future__ import annotations

import mmap
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from hpc_aidc.data import reader as reader_module
from hpc_aidc.data.addrspace import reserve
from hpc_aidc.data.reader import ShardedArray
from hpc_aidc.data.spec import read_manifest


def _array(store: Path) -> ShardedArray:
    return ShardedArray(store, read_manifest(store), "samples")


def test_reserve_maps_files_at_their_slots(tmp_path: Path) -> None:
    page = mmap.PAGESIZE
    files = []
    for k in range(3):
        path = tmp_path / f"f{k}"
        path.write_bytes(bytes([k + 1]) * (page if k < 2 else page // 2))  # the last one short
        files.append(path)
    space = reserve(3, page)
    assert space is not None
    for k, path in enumerate(files):
        fd = os.open(path, os.O_RDONLY)
        space.map_file(k, fd, path.stat().st_size)
        os.close(fd)  # the mapping outlives the descriptor
    rows = space.array(np.dtype(np.uint8), (page,))
    assert rows.shape == (3, page)
    assert (rows[0] == 1).all() and (rows[1] == 2).all() and (rows[2, : page // 2] == 3).all()
    with pytest.raises(ValueError):
        space.map_file(3, 0, page)
    space.close()


def test_reserve_refuses_unaligned_or_huge_slots() -> None:
    assert reserve(4, mmap.PAGESIZE + 2) is None
    assert reserve(1 << 20, 1 << 30) is None  # 1 PiB of address space
    assert reserve(0, mmap.PAGESIZE) is None


def test_one_range_equals_per_shard_reads(packed: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    store, ref = packed
    idx = np.random.default_rng(3).permutation(len(ref))
    ranged = _array(store)
    got = np.concatenate([ranged.take(idx[s:s + 37]) for s in range(0, len(idx), 37)])
    assert ranged._flat is not None and ranged._mapped.all()  # the fast path was the one taken
    np.testing.assert_array_equal(got, ref[idx])
    np.testing.assert_array_equal(ranged.take([-1, 0, -390]), ref[[-1, 0, -390]])
    with pytest.raises(IndexError):
        ranged.take([390])
    monkeypatch.setattr(reader_module, "reserve", lambda slots, slot_bytes: None)
    per_shard = _array(store)
    np.testing.assert_array_equal(per_shard.take(idx), ref[idx])
    assert per_shard._flat is None
    ranged.close()
    per_shard.close()


def _child_reads(arr: ShardedArray, idx: np.ndarray, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(arr.take(idx))


def test_forked_child_reads_through_the_inherited_range(packed: tuple[Path, np.ndarray]) -> None:
    store, ref = packed
    arr = _array(store)
    idx = np.arange(len(ref))[::-1].copy()
    np.testing.assert_array_equal(arr.take(idx[:50]), ref[idx[:50]])  # parent maps some shards first
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(arr, idx, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, ref[idx])
    np.testing.assert_array_equal(arr.take(idx), ref[idx])  # the parent's range still works afterwards
    arr.close()


def test_spawned_worker_builds_its_own_range(packed: tuple[Path, np.ndarray]) -> None:
    """With CUDA initialised, workers must be spawned, not forked: the reader pickles without its maps."""
    import torch

    from hpc_aidc.data.dataset import ResumableLoader, ShardedDataset, ShardedSampler

    store, ref = packed
    ds = ShardedDataset(store)
    ds[0]  # the parent maps a shard first; the pickled copy must not carry that mapping
    sampler = ShardedSampler(ds, rank=0, world_size=1, seed=5)
    loader = ResumableLoader(ds, sampler, batch_size=16, num_workers=1, multiprocessing_context="spawn")
    batches = list(loader)
    order = list(ShardedSampler(ds, rank=0, world_size=1, seed=5))
    got = torch.cat(batches).numpy()
    np.testing.assert_array_equal(got, ref[order[: len(got)]])
