"""Fast random access to one array of a packed store: each shard's index is parsed once per process,
then samples are read straight from the shard file. Uncompressed shards whose chunks lie back to back
(what `hpcai data pack` writes) are mapped side by side into one address range, so the whole array is
indexed like one numpy memmap (a batch across shards is one gather); other shards are read per inner
chunk with os.pread and decoded. File handles open lazily and are reopened after a fork, so a
reader built before DataLoader workers start is safe to use in them."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_aidc.data.addrspace import SlotRange, reserve
from hpc_aidc.data.shardfmt import EMPTY, decode_chunk, parse_index
from hpc_aidc.data.spec import Manifest, open_in_store, shard_key
from hpc_aidc.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

VERIFY_MODES = ("index", "full")


@dataclass
class _Shard:
    name: str
    fd: int
    index: npt.NDArray[np.uint64]
    view: npt.NDArray[Any] | None  # the samples in order when the shard is uncompressed and contiguous
    mm: mmap.mmap | None


class ShardedArray:
    """`arr[i]` is sample i; `arr.take(indices)` a stacked batch. Errors name the shard file."""

    def __init__(self, root: str | Path, manifest: Manifest, name: str, verify: str = "index") -> None:
        import numpy as np

        if verify not in VERIFY_MODES:
            raise DataError(f"Expected verify in {VERIFY_MODES}. Got {verify!r} instead. Pick one.")
        self.root = Path(root)
        self.manifest = manifest
        self.spec = manifest.array(name)
        self.dtype = np.dtype(self.spec.dtype)
        self.verify = verify
        self.shard_samples = manifest.shard_samples
        self.chunk = self.spec.chunk_samples
        self.chunks_per_shard = self.shard_samples // self.chunk
        self._checksums = {f.index: f.sha256 for f in manifest.shard_files(name)}
        self._pid = -1
        self._shards: dict[int, _Shard] = {}
        self._cache: tuple[tuple[int, int], npt.NDArray[Any]] | None = None
        self._range: SlotRange | None = None  # all regular shards side by side, once reserved
        self._flat: npt.NDArray[Any] | None = None  # the array over that range
        self._mapped = np.zeros(manifest.num_shards, dtype=bool)  # shards mapped into the range
        self._reserve_tried = False

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"], state["_pid"], state["_cache"] = {}, -1, None  # handles never cross processes
        state["_range"], state["_flat"], state["_reserve_tried"] = None, None, False
        state["_mapped"] = self._mapped & False
        return state

    def close(self) -> None:
        if self._pid == os.getpid():
            for shard in self._shards.values():
                shard.view = None
                if shard.mm is not None:
                    shard.mm.close()
                os.close(shard.fd)
            if self._range is not None:
                self._range.close()
        self._shards, self._cache, self._range, self._flat, self._reserve_tried = {}, None, None, None, False
        self._mapped[:] = False

    def _slots(self) -> npt.NDArray[Any] | None:
        """The array over the shared address range, reserved on first use where the layout allows."""
        import numpy as np

        if not self._reserve_tried:
            self._reserve_tried = True
            row_bytes = int(np.prod(self.spec.sample_shape, dtype=np.int64)) * self.dtype.itemsize
            if self.manifest.compression == "none":
                self._range = reserve(self.manifest.num_shards, self.shard_samples * row_bytes)
            if self._range is not None:
                self._flat = self._range.array(self.dtype.newbyteorder("<"), tuple(self.spec.sample_shape))
        return self._flat

    def _open(self, k: int) -> _Shard:
        rel = f"{self.spec.name}/{shard_key(k, self.spec.ndim)}"
        try:
            fd = open_in_store(self.root, rel)  # inside the store only: no `..`, no links
        except OSError as exc:
            raise DataError(f"Expected shard file {rel} in {self.root}. Got {exc.strerror}. "
                            "Run `hpcai data verify` and re-pack or re-stage the dataset.") from None
        try:
            return self._map(k, rel, fd)
        except BaseException:
            os.close(fd)  # a bad shard must not leak its fd on every retry
            raise

    def _map(self, k: int, rel: str, fd: int) -> _Shard:
        import numpy as np

        size = os.fstat(fd).st_size
        if self.verify == "full":
            from hpc_aidc.data.verify import check_fd_digest

            check_fd_digest(fd, rel, self._checksums.get(k))
        want = self.chunks_per_shard * 16 + 4
        tail = os.pread(fd, want, max(0, size - want)) if size >= want else b""
        index = parse_index(tail, self.chunks_per_shard, size, rel)
        view, mm = None, None
        nbytes = self.chunk * int(np.prod(self.spec.sample_shape, dtype=np.int64)) * self.dtype.itemsize
        present = int((index[:, 0] != EMPTY).sum())
        n_present = -(-min(self.shard_samples, len(self) - k * self.shard_samples) // self.chunk)
        regular = (self.manifest.compression == "none" and present == n_present and
                   bool(np.all(index[:present, 0] == np.arange(present, dtype=np.uint64) * nbytes)) and
                   bool(np.all(index[:present, 1] == nbytes)))
        flat = self._slots() if regular and present else None
        if flat is not None:
            assert self._range is not None
            self._range.map_file(k, fd, present * nbytes)
            self._mapped[k] = True
            start = k * self.shard_samples
            view = flat[start:start + present * self.chunk]
        elif regular and present:
            mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            view = np.frombuffer(mm, dtype=self.dtype.newbyteorder("<"), count=present * nbytes // self.dtype.itemsize)
            view = view.reshape(present * self.chunk, *self.spec.sample_shape)
        return _Shard(rel, fd, index, view, mm)

    def _own_handles(self) -> None:
        if self._pid != os.getpid():  # a forked worker: drop the parent's handles, open our own
            # (the inherited address range stays: mapping our own files over its slots replaces them)
            self._shards, self._cache, self._pid = {}, None, os.getpid()
            self._mapped[:] = False

    def shard(self, k: int) -> _Shard:
        self._own_handles()
        shard = self._shards.get(k)
        if shard is None:
            shard = self._shards[k] = self._open(k)
        return shard

    def _chunk(self, k: int, j: int) -> npt.NDArray[Any]:
        import numpy as np

        if self._cache is not None and self._cache[0] == (k, j):
            return self._cache[1]
        shard = self.shard(k)
        shape = (self.chunk, *self.spec.sample_shape)
        offset, nbytes = (int(x) for x in shard.index[j])
        if offset == EMPTY:
            data = np.zeros(shape, self.dtype)
        else:
            raw = os.pread(shard.fd, nbytes, offset)
            if len(raw) != nbytes:
                raise DataError(f"Expected {nbytes} bytes at offset {offset} of {shard.name}. Got {len(raw)} "
                                "(truncated shard). Run `hpcai data verify` and re-pack or re-stage it.")
            data = decode_chunk(raw, self.manifest.compression, self.dtype, shape, shard.name)
        self._cache = ((k, j), data)
        return data

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for a dataset of {n}")
        return i % n

    def __getitem__(self, i: int) -> npt.NDArray[Any]:
        i = self._check(int(i))
        k, local = divmod(i, self.shard_samples)
        shard = self.shard(k)
        if shard.view is not None:
            sample: npt.NDArray[Any] = shard.view[local].copy()
            return sample
        j, row = divmod(local, self.chunk)
        sample = self._chunk(k, j)[row].copy()
        return sample

    def take(self, indices: Any) -> npt.NDArray[Any]:
        """Samples at `indices`, stacked, in the order given."""
        import numpy as np

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            if idx.min() < -n or idx.max() >= n:
                raise IndexError(f"indices out of range for a dataset of {n}")
            idx = idx % n
        shards = idx // self.shard_samples
        self._own_handles()
        flat = self._slots()
        if flat is not None:
            if not self._mapped[shards].all():
                for k in np.unique(shards[~self._mapped[shards]]).tolist():
                    self.shard(k)
            if self._mapped[shards].all():
                gathered: npt.NDArray[Any] = flat[idx]  # every shard in one range: one gather
                return gathered
        out = np.empty((len(idx), *self.spec.sample_shape), dtype=self.dtype)
        for k in np.unique(shards).tolist():
            pos = np.nonzero(shards == k)[0]
            local = idx[pos] - k * self.shard_samples
            shard = self.shard(k)
            if shard.view is not None:
                out[pos] = shard.view[local]
            else:
                for p, loc in zip(pos.tolist(), local.tolist(), strict=True):
                    j, row = divmod(loc, self.chunk)
                    out[p] = self._chunk(k, j)[row]
        return out
