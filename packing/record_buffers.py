"""Recycled byte buffers for records that cross a 64 KiB block (`packing/shard_reader.py`).

Why recycle buffers: a fresh 0.5 MB buffer per 32K-token record costs a page fault per 4 KiB
whenever glibc hands the freed memory back to the OS, which it does in Grain's worker processes
(measured: 475,000 faults per worker over 450 batches, and 2 workers at about half the rate they
reach with recycling). `RecordBuffers` reuses a buffer only once nothing references it any more
(by reference count, as `packing/batches.py` does), so a record never changes under its holder.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
from lwmkit.packing.shard_layout import BLOCK


def _unreferenced() -> int:
    # The count a pooled buffer has when only the pool holds it, measured the way `take` looks.
    for buf in [np.empty(1)]:
        return sys.getrefcount(buf)
    raise AssertionError


_UNREFERENCED = _unreferenced()


class RecordBuffers:
    """Recycled byte buffers for records that cross a block boundary (see the module docstring).

    Thread-safe. A buffer is reused for a record of at least half its size once nothing outside
    the pool references it, so the pool holds about as many buffers as records were in flight at
    the busiest moment (a loader's prefetch buffer and batch); past `max_bytes` or `max_count` the
    oldest buffers leave the pool (those still in use are freed when their last user lets go).

    Args:
      max_bytes: the most bytes the pool keeps.
      max_count: the most buffers the pool keeps.
    """

    def __init__(self, max_bytes: int = 256 << 20, max_count: int = 64):
        self.max_bytes = max_bytes
        self.max_count = max_count
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> np.ndarray:
        """A writable uint8 array of `size` bytes that nothing else references."""
        with self._lock:
            for buf in self._buffers:
                if (
                    size <= buf.shape[0] <= 2 * size + BLOCK
                    and sys.getrefcount(buf) <= _UNREFERENCED
                ):
                    return buf[:size]  # the view's reference marks the buffer as in use
            buf = np.empty(-(-size // BLOCK) * BLOCK, dtype=np.uint8)
            self._buffers.append(buf)
            while len(self._buffers) > 1 and (
                len(self._buffers) > self.max_count
                or sum(b.shape[0] for b in self._buffers) > self.max_bytes
            ):
                self._buffers.pop(0)
            return buf[:size]
