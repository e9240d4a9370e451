"""Training batches prepared off the critical path: a background thread builds the next micro-batch (reads
the shard, pins the host memory) while the device computes the current one, and the copy to the GPU is
non-blocking. The loader position a checkpoint records is the one before the first batch not yet handed
to training, so a prefetched batch is never lost or repeated on resume."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

# fetch() -> (the source's position before this batch, the batch on the host)
Fetch = Callable[[], tuple[Any, torch.Tensor]]


class Prefetcher:
    def __init__(self, fetch: Fetch, device: torch.device) -> None:
        self._fetch = fetch
        self.device = device
        self._pin = device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpcai-batches")
        self._next: Future[tuple[Any, torch.Tensor]] = self._pool.submit(self._prepare)

    def _prepare(self) -> tuple[Any, torch.Tensor]:
        position, batch = self._fetch()
        return position, batch.pin_memory() if self._pin else batch

    def next(self) -> torch.Tensor:
        """The next batch, on the device (the host-to-device copy overlaps with compute on GPUs)."""
        _, batch = self._next.result()
        self._next = self._pool.submit(self._prepare)
        return batch.to(self.device, non_blocking=self._pin)

    def position(self) -> Any:
        """The source's position before the next batch training has not received yet."""
        return self._next.result()[0]

    def close(self) -> None:
        self._next.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
