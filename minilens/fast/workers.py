"""Work split across the cores, each piece in its own thread with BLAS at one thread.

Why: numpy's element-wise passes (softmax, SiLU, norms, the lens's statistics) run on one core,
while its matrix products use every BLAS thread. So with BLAS multithreaded, the other cores idle
through every element-wise pass; and right after a product OpenBLAS's idle workers keep spinning
on the cores for a while, so a second Python thread gains little next to them (issue 6).

Here instead each worker takes its own share of independent work (rows of a forward pass,
positions of the lens) and does all of it, products and element-wise passes alike, in one thread,
with BLAS pinned to one thread while the workers run. numpy releases the GIL inside its products
and its element-wise loops, so the workers run on the cores at the same time.

BLAS's thread count is set through OpenBLAS's own ``openblas_set_num_threads`` (found with ctypes
in the process's loaded libraries, as threadpoolctl finds it), and put back when the workers are
done. Where there is no OpenBLAS to pin (numpy built on MKL or Apple's Accelerate), or one core,
``n_workers()`` is 1 and everything runs in the caller's thread, as before.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

# The names OpenBLAS exports its thread setters under: the scipy-openblas wheels numpy ships with
# (64-bit integers, prefixed), and a plain OpenBLAS build.
_SETTERS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
            ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
            ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
            ("openblas_set_num_threads", "openblas_get_num_threads"))


def _openblas() -> tuple[Callable, Callable] | None:
    """(set_num_threads, get_num_threads) of the OpenBLAS numpy loaded, or None."""
    import numpy as np  # noqa: F401  (loads numpy's BLAS into the process first)
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps
                     if "openblas" in line.lower() and "/" in line}
    except OSError:                                 # not Linux: no /proc
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SETTERS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


_BLAS = _openblas()
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def workers_wanted(value: str | None) -> int:
    """MINILENS_WORKERS: a number of workers (1 switches the split off: one thread, BLAS as numpy
    set it); unset, empty or 0 means one per core. Anything else is ignored, with a warning."""
    try:
        wanted = int(value or 0)
        if wanted < 0:
            raise ValueError
        return wanted
    except ValueError:
        warnings.warn(f"MINILENS_WORKERS={value!r} is not a whole number of workers (1 switches "
                      f"the split off, 0 means one per core); using one per core.", stacklevel=2)
        return 0


_WANTED = workers_wanted(os.environ.get("MINILENS_WORKERS"))

_lock = threading.Lock()
_pinned = 0                 # how many callers are inside ``split`` now
_saved_threads = 1          # BLAS's thread count before the first of them came in
_pool: ThreadPoolExecutor | None = None
_pool_size = 0              # its threads: a split of n shares needs n - 1
_PREFIX = "minilens-worker"


def _after_fork() -> None:
    """A forked child has none of its parent's threads: start afresh."""
    global _lock, _pinned, _pool, _pool_size
    _lock, _pinned, _pool, _pool_size = threading.Lock(), 0, None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def n_workers() -> int:
    """How many workers ``split`` runs: one per core (at most 8), 1 where BLAS cannot be pinned."""
    if _BLAS is None:
        return 1
    return max(1, min(_WANTED or _CORES, 8))


def _pin(on: bool) -> None:
    global _pinned, _saved_threads
    with _lock:
        if on:
            if _pinned == 0:
                _saved_threads = _BLAS[1]()
                _BLAS[0](1)
            _pinned += 1
        else:
            _pinned -= 1
            if _pinned == 0:
                _BLAS[0](_saved_threads)


def split(work: Callable[[int], None], n: int) -> None:
    """Run ``work(0)``, ..., ``work(n - 1)`` at once, each in its own thread (the caller's thread
    does ``work(0)``), with BLAS at one thread until all are done. Each must touch only its own
    share of the arrays. An exception in any is raised here, after all have finished."""
    global _pool, _pool_size
    if n <= 1:
        work(0)
        return
    if threading.current_thread().name.startswith(_PREFIX):
        # Called from inside a worker: its own thread is the one the others would wait for, so
        # the shares run here, one after another.
        for i in range(n):
            work(i)
        return
    with _lock:
        if _pool_size < n - 1:
            _pool, _pool_size = ThreadPoolExecutor(n - 1, thread_name_prefix=_PREFIX), n - 1
        pool = _pool
    _pin(True)
    try:
        futures = [pool.submit(work, i) for i in range(1, n)]
        try:
            work(0)
        finally:
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
    finally:
        _pin(False)


def shares(n_items: int, n: int) -> list[slice]:
    """n contiguous, nearly equal slices of range(n_items)."""
    bounds = [round(i * n_items / n) for i in range(n + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


def balanced(costs: Sequence[float], n: int) -> list[list[int]]:
    """Indices of ``costs`` dealt to n workers so that their total costs are close: the dearest
    first, each to the worker with the least so far."""
    totals, out = [0.0] * n, [[] for _ in range(n)]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        w = totals.index(min(totals))
        out[w].append(i)
        totals[w] += costs[i]
    return out


def in_runs(costs: Sequence[float], n: int) -> list[list[int]]:
    """Indices of ``costs`` cut into n runs, in order, of nearly equal total cost: each item goes
    to the worker whose equal share of the running total holds the item's middle. Workers that
    write into one buffer then each write their own part of it."""
    ends = list(itertools.accumulate(costs))
    total, out = (ends[-1] if ends else 0) or 1, [[] for _ in range(n)]
    for i, end in enumerate(ends):
        out[min(n - 1, int((end - costs[i] / 2) * n / total))].append(i)
    return out
