"""Greedy generation with the KV cache against re-running the whole sequence, side by side.

Run by hand, never in the test suite:

    python tests/benchmarks/generate.py --threads 1 --clock cpu     # a few minutes on SmolLM2
    python tests/benchmarks/generate.py --new 50 200 --repeats 3 --model smollm2

For each number of new tokens, ``model.generate(ids, n)`` (the cache: each step runs the new token
alone through forward.py, generate.py) and ``model.generate(ids, n, kv_cache=False)`` (each step
runs the whole sequence through the default fast forward pass) alternate round by round in a
rotating order (harness.interleaved), after a warm-up of a few tokens each; medians are reported.
The two must give the same tokens, or the script stops. The prompt is text, tokenized by the
model: "The Eiffel Tower is located in the city of".

The uncached cost grows with the sequence (step t runs t tokens), the cached one barely (step t
runs one token, and its attention reads t cached keys), so the speed-up grows with the number of
new tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import harness  # noqa: E402
import minilens as ml  # noqa: E402

PROMPT = "The Eiffel Tower is located in the city of"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a model name or path (default smollm2)")
    p.add_argument("--new", type=int, nargs="+", default=[50, 200],
                   help="numbers of new tokens (default 50 200)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per length (default 3)")
    p.add_argument("--threads", type=int, default=1, help="numpy's BLAS threads (default 1)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="the wall clock, or this process's CPU time (robust to other jobs at "
                        "--threads 1)")
    args = p.parse_args()

    threads = harness.pin_threads(args.threads)
    machine = harness.machine()
    model = ml.load(args.model)
    ids = model.to_tokens(PROMPT)
    print(f"# generate: KV cache vs none, {args.model}, prompt of {len(ids)} tokens")
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores; numpy {machine['numpy']}; "
          f"{threads.get('numpy_blas', '')}")
    print(f"load average at start: {machine['load_avg_at_start']}; clock: {args.clock}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    model.generate(ids, 4), model.generate(ids, 4, kv_cache=False)          # warm-up
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    rows = []
    for n in args.new:
        cached, uncached = model.generate(ids, n), model.generate(ids, n, kv_cache=False)
        if cached.tolist() != uncached.tolist():
            raise SystemExit(f"{n} new tokens: the cached tokens differ from the uncached ones")
        times = harness.interleaved(
            {"cached": lambda n=n: model.generate(ids, n),
             "uncached": lambda n=n: model.generate(ids, n, kv_cache=False)},
            repeats=args.repeats, warmup=0, clock=clock)
        c, u = harness.median(times["cached"]), harness.median(times["uncached"])
        rows.append((n, c, u))
        print(f"{n} new tokens: cached {c:.2f} s, uncached {u:.2f} s (all: "
              f"{[round(t, 2) for t in times['cached']]}, "
              f"{[round(t, 2) for t in times['uncached']]})", flush=True)

    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("| new tokens | cached s | uncached s | speed-up | cached ms/token | "
          "uncached ms/token |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, c, u in rows:
        print(f"| {n} | {c:.2f} | {u:.2f} | {u / c:.1f}x | {1000 * c / n:.0f} | "
              f"{1000 * u / n:.0f} |")


if __name__ == "__main__":
    main()
