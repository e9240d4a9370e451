"""The PyTorch side: a map-style Dataset over a packed store, a shard-aware distributed sampler with an
exact, world-size-independent resume, and a DataLoader wrapper that counts what training consumed.

    ds = ShardedDataset("/proj/data/corpus.zarr")            # reads a staged local copy if there is one
    sampler = ShardedSampler(ds, seed=1234)                   # rank/world from torch.distributed or Slurm
    loader = ResumableLoader(ds, sampler, batch_size=8, num_workers=2)
    loader.load_state_dict(ckpt["data"])                      # optional: resume mid-epoch
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        for batch in loader: ...; ckpt["data"] = loader.state_dict()
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hpc_aidc.data.reader import ShardedArray
from hpc_aidc.data.sampler import OrderSpec, Segment, make_state, parse_state, plan_segment
from hpc_aidc.data.spec import SAMPLES, read_manifest
from hpc_aidc.data.stage import staged_copy


class StackedRows(list[Any]):
    """What `__getitems__` returns: a list of samples (for any collate_fn) that also carries the batch
    already stacked, so `collate` hands it to torch without a second copy."""

    stacked: Any = None


def _to_torch(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    return torch.from_numpy(value)


def collate(batch: Sequence[Any]) -> Any:
    """Fast collate for ShardedDataset batches (tensors; a dict of them with extra arrays)."""
    if isinstance(batch, StackedRows) and batch.stacked is not None:
        return _to_torch(batch.stacked)
    if isinstance(batch[0], dict):
        return {k: torch.from_numpy(np.stack([b[k] for b in batch])) for k in batch[0]}
    return torch.from_numpy(np.stack(list(batch)))


class ShardedDataset(Dataset[Any]):
    """Sample i of a packed store: the `samples` row, or a dict {array: row} when `arrays` names more.

    `local="auto"` reads this job's staged copy when `hpcai data stage` made one on this node; `verify`
    "index" checks each shard's index crc on first use, "full" also its sha256 (reads the shard once)."""

    def __init__(self, path: str | Path, arrays: Sequence[str] | None = None, local: str | bool = "auto",
                 verify: str = "index") -> None:
        self.source = Path(path)
        copy = staged_copy(self.source) if local in ("auto", True) else None
        self.root = copy or self.source
        self.manifest = read_manifest(self.root)
        names = tuple(arrays) if arrays is not None else tuple(
            a.name for a in self.manifest.arrays if a.name in (SAMPLES, "labels"))
        self.arrays = {n: ShardedArray(self.root, self.manifest, n, verify) for n in names}
        self.single = names == (SAMPLES,)
        self.stacked_only = False  # set by ResumableLoader when it collates with `collate`

    @property
    def shard_samples(self) -> int:
        return self.manifest.shard_samples

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __getitem__(self, index: int) -> Any:
        if self.single:
            return self.arrays[SAMPLES][index]
        return {n: a[index] for n, a in self.arrays.items()}

    def __getitems__(self, indices: Sequence[int] | np.ndarray[Any, np.dtype[np.int64]]) -> StackedRows:
        if self.single:
            stacked: Any = self.arrays[SAMPLES].take(indices)
            # with our collate the per-row list is never looked at: skip building it (~10% of a batch)
            rows = StackedRows() if self.stacked_only else StackedRows(stacked)
        else:
            stacked = {n: a.take(indices) for n, a in self.arrays.items()}
            rows = StackedRows({n: v[i] for n, v in stacked.items()} for i in range(len(indices)))
        rows.stacked = stacked
        return rows

    def document_starts(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Global token offsets where documents start (token datasets); sample i holds tokens
        [i*seq_len, (i+1)*seq_len)."""
        import zarr

        return np.asarray(zarr.open_array(str(self.root / "doc_starts"), mode="r")[:], dtype=np.int64)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("SLURM_PROCID", "0")), int(os.environ.get("SLURM_NTASKS", "1"))


class ShardedSampler(Sampler[int]):
    """Disjoint, shard-affine, equally long per-rank lists, shuffled from (seed, epoch); see sampler.py.

    `state_dict(consumed)` records the samples this rank consumed since the current pass began (default:
    what it yielded, exact without DataLoader prefetch; ResumableLoader passes the delivered count).
    The state is the same on every rank, so saving rank 0's is enough."""

    def __init__(self, dataset: ShardedDataset | None = None, *, num_samples: int | None = None,
                 shard_samples: int | None = None, rank: int | None = None, world_size: int | None = None,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False, holdout: float = 0.0) -> None:
        if dataset is not None:
            num_samples, shard_samples = len(dataset), dataset.shard_samples
        if num_samples is None or shard_samples is None:
            raise TypeError("ShardedSampler needs a dataset or num_samples and shard_samples")
        env_rank, env_world = _rank_world()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} out of range for world size {self.world_size}")
        self.spec = OrderSpec(num_samples, shard_samples, seed, shuffle, drop_last, holdout)
        self.epoch = 0
        self._segments: list[Segment] = []
        self._pending = False  # a loaded state applies to the next pass only
        self._order: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._start = 0
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._segments, self._pending, self._order = epoch, [], False, None

    def _prepare(self) -> None:
        if not self._pending:
            self._segments = []
        self._pending = False
        self._segments, lists, self._start = plan_segment(self.spec, self.epoch, self._segments, self.world_size)
        self._order = lists[self.rank]
        self._yielded = 0

    def __iter__(self) -> Iterator[int]:
        for index in self.remaining_order().tolist():
            self._yielded += 1
            yield index

    def remaining_order(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Start a pass and return this rank's indices still to come, as one array."""
        self._prepare()
        assert self._order is not None
        return self._order[self._start:]

    def __len__(self) -> int:
        if self._order is not None and not self._pending:
            return int(len(self._order) - self._start)
        _, lists, start = plan_segment(self.spec, self.epoch, self._segments if self._pending else [],
                                       self.world_size)
        return int(lists.shape[1] - start)

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        done = self._yielded if consumed is None else consumed
        segments = list(self._segments)
        if segments and not self._pending:
            last = segments[-1]
            total = len(self._order) if self._order is not None else last.consumed
            segments[-1] = Segment(last.world, min(total, self._start + done))
        return make_state(self.spec, self.epoch, segments)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spec, self.epoch, self._segments = parse_state(state, self.spec)
        self._pending, self._order = True, None


class ResumableLoader:
    """A DataLoader over a ShardedDataset whose state_dict counts the batches training received."""

    def __init__(self, dataset: ShardedDataset, sampler: ShardedSampler, batch_size: int,
                 num_workers: int = 0, drop_last: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate)
        dataset.stacked_only = kwargs["collate_fn"] is collate
        kwargs.setdefault("persistent_workers", num_workers > 0)
        self.sampler = sampler
        self.batch_size = batch_size
        self.dataset = dataset
        self.drop_last = drop_last
        # In-process batches need no DataLoader: slicing the sampler's index array and gathering each
        # batch at once skips the per-sample Python work of DataLoader's batch sampler.
        self._direct = num_workers == 0 and kwargs["collate_fn"] is collate and not kwargs.get("pin_memory")
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                 drop_last=drop_last, **kwargs)
        self._delivered = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self._delivered = 0
        if self._direct:
            yield from self._direct_batches()
            return
        for batch in self.loader:
            self._delivered += self.batch_size
            yield batch

    def _direct_batches(self) -> Iterator[Any]:
        order = self.sampler.remaining_order()
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            indices = order[start:start + self.batch_size]
            batch = collate(self.dataset.__getitems__(indices))
            self._delivered += len(indices)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict(consumed=self._delivered)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def build_loader(path: str | Path, batch_size: int, *, seed: int = 0, num_workers: int = 2,
                 rank: int | None = None, world_size: int | None = None, shuffle: bool = True,
                 drop_last: bool = False, holdout: float = 0.0, **kwargs: Any) -> ResumableLoader:
    """What a train config's `data.path` maps to: dataset + sampler + loader in one call (`holdout`: the
    fraction of samples left out for validation, sampler.heldout_ids)."""
    dataset = ShardedDataset(path)
    sampler = ShardedSampler(dataset, rank=rank, world_size=world_size, seed=seed, shuffle=shuffle,
                             drop_last=drop_last, holdout=holdout)
    return ResumableLoader(dataset, sampler, batch_size, num_workers=num_workers, **kwargs)
