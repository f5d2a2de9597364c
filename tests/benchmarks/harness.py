"""Timing and memory measurement shared by the benchmarks.

- ``pin_threads``: numpy's BLAS and torch on the same thread count, so ratios compare code, not
  cores.
- ``interleaved``: every contender runs once per round, in a rotating order, after a warm-up round;
  the machine is shared, so slow phases hit all contenders alike and medians ignore the outliers.
- ``peak_rss_during``: the process's peak resident memory while a function runs, measured by the
  kernel (Linux resets the VmHWM high-water mark when "5" is written to /proc/self/clear_refs),
  beside tracemalloc's count of Python/numpy allocations (torch's allocator is invisible to it).
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import tracemalloc
from typing import Callable


def pin_threads(n: int) -> dict:
    """Set numpy's BLAS and torch to n threads; return what is actually running."""
    info = {"threads": n}
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(n)
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        info["numpy_blas"] = ", ".join(f"{p['internal_api']} {p['version']} "
                                       f"kernel={p.get('architecture')} "
                                       f"threads={p['num_threads']}" for p in blas)
    except ImportError:
        info["numpy_blas"] = "unknown (pip install threadpoolctl to pin and report it)"
    try:
        import torch
        torch.set_num_threads(n)
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def machine() -> dict:
    import numpy
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")),
               platform.processor())
    out = {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
           "numpy": numpy.__version__,
           "load_avg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
           "env": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                           if k.startswith(("OPENBLAS", "OMP_", "MKL_")))}
    for mod in ("torch", "transformers", "transformer_lens"):
        try:
            out[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            try:
                from importlib.metadata import version
                out[mod] = version(mod.replace("_", "-"))
            except Exception:
                out[mod] = "not installed"
    return out


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call for each contender, rounds interleaved, order rotated each round.

    ``clock=time.process_time`` counts the CPU time of every thread of this process instead of the
    wall clock: on a machine shared with other jobs, that is what the code itself costs (with one
    thread; with several, time spent spinning at BLAS barriers counts too).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            gc.collect()
            t0 = clock()
            result = contenders[name]()
            times[name].append(clock() - t0)
            del result
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def _status(field: str) -> int:
    """A VmXXX line of /proc/self/status, in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss() -> int:
    return _status("VmRSS")


def peak_rss_during(fn: Callable[[], object]) -> tuple[object, dict]:
    """Run fn once; return its result and its extra peak memory (bytes above the RSS before it)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:   # resets VmHWM to the current RSS
        fh.write("5")
    before = rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, {"seconds": seconds, "rss_before": before, "rss_peak": _status("VmHWM"),
                    "extra_rss": _status("VmHWM") - before, "tracemalloc_peak": traced_peak}
