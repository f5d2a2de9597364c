"""Why the same forward pass took 0.65 s or 0.8 s: page faults, counted, with and without the pool
(issue 6).

A forward pass allocates and frees a few hundred MB of activations. Whether glibc's malloc hands
that memory back to the kernel between runs (and the next run faults it in again, page by page)
depends on what the process did before: glibc adapts its mmap and trim thresholds to the sizes it
has seen freed. Each model therefore recycles that memory itself (minilens/fast/memory.py). This
script runs minilens's GPT-2-small forward at 512 tokens in three states of the same process
history, each in a fresh subprocess, once with the model's pool and once with ``model.pool = None``
(every value a fresh numpy array, as before the pool), and reports the median wall time and the
minor page faults per forward (getrusage):

- fresh:         load, then run (what a script or a notebook does first)
- widened first: load, ``list(model.layers)`` (all layers widened before the first run), then run
- holding:       load, then run while two earlier traces are still alive

It then times what a full trace's own memory costs to obtain in the expensive state: 320 MB
written as 213 arrays of [512, 768] float32 (1.5 MB each, the size of one layer's activation,
too small for numpy to ask for huge pages) against the same bytes as 18 stacked
[12, 512, 768] arrays (18 MB each, which numpy madvises for transparent huge pages).

Run by hand:  python tests/benchmarks/page_faults.py [--threads 2] [--repeats 5]
With ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment,
glibc's thresholds are fixed, and even without the pool every state runs without re-faulting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np
sys.path.insert(0, {here!r})
import harness, checkpoints
harness.pin_threads({threads})
import minilens as ml
state, repeats = {state!r}, {repeats}
model = ml.load(checkpoints.gpt2_small())
if not {pool!r}:
    model.pool = None
if state == "widened first":
    list(model.layers)
ids = np.random.default_rng(512).integers(0, model.cfg.d_vocab, 512)
held = [model.run(ids) for _ in range(2)] if state == "holding" else []
out = {{}}
for what, fn in (("run (full trace)", lambda: model.run(ids)),
                 ("model(ids) (logits only)", lambda: model(ids))):
    fn()                                                  # warm-up
    times, faults = [], []
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    out[what] = (statistics.median(times), int(statistics.median(faults)))
print(json.dumps(out))
"""


FRESH_MEMORY = r"""
import json, resource, statistics, sys, time
import numpy as np
sys.path.insert(0, {here!r})
import harness, checkpoints
harness.pin_threads({threads})
import minilens as ml
model = ml.load(checkpoints.gpt2_small())
list(model.layers)
ids = np.random.default_rng(512).integers(0, model.cfg.d_vocab, 512)
model(ids), model(ids)
src = np.ones((512, 768), np.float32)

def per_layer():
    kept = [np.empty((512, 768), np.float32) for _ in range(213)]
    for a in kept:
        a[...] = src
    return kept

def stacked():
    kept = [np.empty((12, 512, 768), np.float32) for _ in range(18)]
    for a in kept:
        a[...] = src
    return kept

out = {{}}
for what, fn in (("213 arrays of 1.5 MB", per_layer), ("18 stacked arrays of 18 MB", stacked)):
    fn()
    times, faults = [], []
    for _ in range({repeats}):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        kept = fn()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
        del kept
    out[what] = (statistics.median(times), int(statistics.median(faults)))
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    malloc_env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                          if k.startswith("MALLOC_"))
    print(f"# GPT-2-small, 512 tokens, {args.threads} threads; "
          f"malloc env: {malloc_env or 'glibc defaults'}")
    print("| process state | forward | with the pool: median s | minor faults "
          "| model.pool = None: median s | minor faults |")
    print("|---|---|---:|---:|---:|---:|")
    for state in ("fresh", "widened first", "holding"):
        results = []
        for pool in (True, False):
            code = CHILD.format(here=str(HERE), threads=args.threads, state=state,
                                repeats=args.repeats, pool=pool)
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True)
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
        for what in results[0]:
            (s1, f1), (s0, f0) = results[0][what], results[1][what]
            print(f"| {state} | {what} | {s1:.3f} | {f1} | {s0:.3f} | {f0} |", flush=True)
    code = FRESH_MEMORY.format(here=str(HERE), threads=args.threads, repeats=args.repeats)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    print("\n| 320 MB of fresh memory, written once (widened first) | median s | minor faults |")
    print("|---|---:|---:|")
    for what, (seconds, faults) in json.loads(res.stdout.strip().splitlines()[-1]).items():
        print(f"| {what} | {seconds:.3f} | {faults} |")


if __name__ == "__main__":
    main()
