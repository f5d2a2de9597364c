"""Recycled memory for the forward pass's values and the traces that keep them (issue 6).

A full trace of GPT-2-small at 512 tokens keeps about 320 MB: a hundred arrays of 1.5 MB, twelve
of 6 MB and the 100 MB of logits. Memory that is new to the process is faulted in by the kernel,
4 KB page by 4 KB page, when it is first written. Whether glibc's malloc hands a dropped trace's
memory back to the kernel, so that the next run pays those faults again, depends on the history of
the whole process. The same full-trace forward pass measured 0.76 s in one benchmark process and
0.95 s in another; the logits alone took 0.72 and 0.69 s (tests/benchmarks/README.md).

So each model keeps the memory of the traces that have been dropped, and hands it to its next run.
Every value that a trace can keep (q, k, v, z, attn_out, resid_mid, mlp_post, mlp_out, resid_post,
normalized, logits) is written into an anonymous memory map owned by the model's ``ArrayPool``,
whether or not this trace keeps it. When such an array and every view of it have been
garbage-collected, its map goes back to the pool instead of to the kernel. PyTorch's caching
allocators do the same.

The pool keeps no more unused memory than one run asked of it: the larger of the current run's and
the previous run's total, and never more than ``MAX_FREE_BYTES``. So repeated runs of one length
find everything they need, while a sequence that grows run by run (``model.generate``) does not pile
up maps of every length it went through. ``model.free_memory()`` gives all of it back to the kernel.

Only memory is recycled, never values: an array goes back to the pool only when nothing in the
program can reach it any more. A kept slice such as ``trace["resid_pre", 3][-1]`` keeps its whole
array out of the pool, and so does anything reached from an array (its ``.base``, a memoryview, a
torch tensor): the map itself is never exposed (PooledMemory). tracemalloc does not see this
memory (it is not malloc's); the peak RSS does.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

from .pages import anonymous_map

# Unused memory a model's pool keeps: a full trace of GPT-2-small at 1024 tokens is about 650 MB.
MAX_FREE_BYTES = 1 << 30
# numpy asks the kernel for transparent huge pages from this size up; so does the pool, whose
# maps are written on every run (a GPT-2-small forward at 512 tokens took 3% to 6% longer in
# 4 KiB pages: tests/benchmarks/README.md, "first use"), and not only once as weights are.
HUGE_PAGES_FROM = 4 << 20


class PooledMemory:
    """The ``.base`` of a pooled array: the map's address and the array's layout, handed to numpy
    through ``__array_interface__``, and not the map itself (issue 18, item 6).

    It has no buffer to export, so nothing reached from a pooled array (``.base``,
    ``np.frombuffer``, ``memoryview``, ``torch.from_numpy``) leads to the map; and holding it
    holds the memory, since the map goes back to the pool only once this object is unreachable.
    When ``.base`` was the map, a program could hold ``trace.logits.base``, drop the trace, and see
    a later run's logits through it."""

    def __init__(self, buf: mmap.mmap, shape: tuple, dtype: np.dtype):
        address = np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
        self.__array_interface__ = dict(version=3, shape=tuple(int(n) for n in shape),
                                        typestr=dtype.str, data=(address, False))


class ArrayPool:
    """Hands out uninitialised arrays whose memory comes back to the pool when they are dropped."""

    def __init__(self, max_free_bytes: int = MAX_FREE_BYTES):
        self.max_free_bytes = max_free_bytes
        self.free_bytes = 0
        self.run_bytes = self.last_run_bytes = 0  # what this run and the one before asked for
        # nbytes -> unused maps; oldest size first
        self._free: OrderedDict[int, list[mmap.mmap]] = OrderedDict()
        # re-entrant: a garbage collection inside empty() may give memory back
        self._lock = threading.RLock()
        POOLS.add(self)

    def begin_run(self) -> None:
        """A forward pass starts: what the last one asked for becomes the measure of what to
        keep."""
        with self._lock:
            self.last_run_bytes, self.run_bytes = self.run_bytes, 0

    def keep_limit(self) -> int:
        return min(self.max_free_bytes, max(self.run_bytes, self.last_run_bytes))

    def empty(self, shape: tuple, dtype) -> np.ndarray:
        """Like np.empty(shape, dtype), in recycled memory when the pool has a map of this size."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes == 0:
            return np.empty(shape, dtype)
        with self._lock:
            self.run_bytes += nbytes
            maps = self._free.get(nbytes)
            buf = maps.pop() if maps else None
            if buf is not None:
                self.free_bytes -= nbytes
                if not maps:
                    del self._free[nbytes]
        if buf is None:
            buf = anonymous_map(nbytes)
            if nbytes >= HUGE_PAGES_FROM and hasattr(mmap, "MADV_HUGEPAGE"):
                buf.madvise(mmap.MADV_HUGEPAGE)
        memory = PooledMemory(buf, shape, dtype)
        array = np.asarray(memory)                  # array.base is `memory`, never the map
        # Every view of `array` has `array` as its base, because array's own base is not an
        # ndarray. So this runs only once the array, all of its views and whatever holds its
        # base are unreachable.
        weakref.finalize(memory, self._give_back, nbytes, buf).atexit = False
        return array

    def _give_back(self, nbytes: int, buf: mmap.mmap) -> None:
        with self._lock:
            if nbytes > self.keep_limit():
                return            # not kept: the map is unmapped when `buf` is collected
            self._free.setdefault(nbytes, []).append(buf)
            self._free.move_to_end(nbytes)
            self.free_bytes += nbytes
            # forget the sizes that were used longest ago
            while self.free_bytes > self.keep_limit():
                oldest, maps = next(iter(self._free.items()))
                maps.pop(0)
                self.free_bytes -= oldest
                if not maps:
                    del self._free[oldest]

    def clear(self) -> None:
        """Give every unused map back to the kernel."""
        with self._lock:
            self._free.clear()
            self.free_bytes = 0

    def _after_fork(self) -> None:
        """In a forked child: a new lock, and no free maps. A thread of the parent may have held
        the lock (and been halfway through the free lists) when another forked; that thread does
        not exist in the child, so the inherited lock would never be released (issue 18)."""
        self._lock = threading.RLock()
        self._free = OrderedDict()
        self.free_bytes = 0


# Every pool in the process, for the fork handler. Weak: it keeps no pool alive.
POOLS: weakref.WeakSet = weakref.WeakSet()


def _reset_pools_after_fork() -> None:
    for pool in list(POOLS):
        pool._after_fork()


if hasattr(os, "register_at_fork"):                 # Unix; Windows has no fork
    os.register_at_fork(after_in_child=_reset_pools_after_fork)
