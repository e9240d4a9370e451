"""One contiguous, read-only address range over many shard files, so a batch whose samples span shards is
a single numpy gather (exactly what a numpy memmap of one flat file does) instead of a gather per shard
plus a scatter into the batch.

The range is reserved once (PROT_NONE, no swap reserved, so it costs address space only); each shard's
data bytes are then mapped at their fixed slot with MAP_FIXED as the shard is first used. Linux only;
`reserve` returns None elsewhere, or when the slots would not be page-aligned, and callers fall back to
per-shard maps."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# Well below x86-64's 128 TiB of user address space, so several readers (and a few workers) fit.
MAX_RESERVE = 1 << 44
_PROT_NONE, _MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS, _MAP_NORESERVE = 0, 1, 2, 0x10, 0x20, 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _unmap(libc: Any, base: int, size: int, pid: int) -> None:
    if os.getpid() == pid:  # a forked child never unmaps its parent's reservation behind its back
        libc.munmap(base, size)


class SlotRange:
    """`slots` equal slots of `slot_bytes` each; `array(dtype, row_shape)` views the whole range."""

    def __init__(self, libc: Any, base: int, slots: int, slot_bytes: int) -> None:
        self._libc, self.base, self.slots, self.slot_bytes = libc, base, slots, slot_bytes
        self.size = slots * slot_bytes
        self._finalizer = weakref.finalize(self, _unmap, libc, base, self.size, os.getpid())

    def map_file(self, slot: int, fd: int, nbytes: int) -> None:
        """Map the first `nbytes` of the open file `fd` at slot `slot` (the fd may be closed afterwards)."""
        if not 0 <= slot < self.slots or not 0 < nbytes <= self.slot_bytes:
            raise ValueError(f"slot {slot} / {nbytes} bytes outside a range of {self.slots} x {self.slot_bytes}")
        want = self.base + slot * self.slot_bytes
        got = self._libc.mmap(want, nbytes, mmap.PROT_READ, _MAP_SHARED | _MAP_FIXED, fd, 0)
        if got != want:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of slot {slot} failed: {os.strerror(err)}")

    def array(self, dtype: np.dtype[Any], row_shape: tuple[int, ...]) -> npt.NDArray[Any]:
        import numpy as np

        buffer = (ctypes.c_char * self.size).from_address(self.base)
        rows: npt.NDArray[Any] = np.frombuffer(memoryview(buffer).cast("B"), dtype=dtype).reshape(-1, *row_shape)
        return rows

    def close(self) -> None:
        self._finalizer()


def reserve(slots: int, slot_bytes: int) -> SlotRange | None:
    """A fresh reservation, or None where this platform or layout cannot have one."""
    size = slots * slot_bytes
    if sys.platform != "linux" or slots <= 0 or slot_bytes <= 0 or slot_bytes % mmap.PAGESIZE or size > MAX_RESERVE:
        return None
    libc = _libc()
    base = libc.mmap(None, size, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
    if base in (None, _MAP_FAILED):
        return None
    return SlotRange(libc, int(base), slots, slot_bytes)
