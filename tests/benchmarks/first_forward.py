"""Load + the first three forwards of SmolLM2 in fresh processes, with and without each of the
ways minilens makes a GGUF model's first forward cheap (issue 13's "load + first <= 2x the
second").

    python tests/benchmarks/first_forward.py --rounds 3 --seq 128

Each round runs one fresh process per variant, in turn:
  as-is            the model as minilens loads it
  between-products each layer widened when the forward pass comes to it, between two products
                   (LazyLayers.widen_all skipped), as before 2026-12-07
  one-worker       every tensor dequantized in this thread (a block's tensors not shared among
                   the workers, nor a large tensor's pieces)
and prints each process's load, first, second and third forward (model(ids), random ids), and
the seconds spent widening layers (LazyLayers.widen_seconds).
Run by hand on a quiet machine; numpy's BLAS at its default threads.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

VARIANTS = ("as-is", "between-products", "one-worker")


def child(variant: str, n_seq: int) -> None:
    import numpy as np

    import minilens as ml
    from minilens.loading import checkpoint, gguf_checkpoint, gguf_file
    if variant == "between-products":
        checkpoint.LazyLayers.widen_all = lambda self: None
    if variant == "one-worker":
        gguf_checkpoint.PARALLEL_WEIGHTS = 0           # a block's tensors one after another
        gguf_file.PARALLEL_WEIGHTS = 1 << 62           # a large tensor in one piece
    ids = np.random.default_rng(0).integers(0, 49152, n_seq)
    t0 = time.perf_counter()
    model = ml.load("smollm2")
    times = [time.perf_counter() - t0]
    for _ in range(3):
        t0 = time.perf_counter()
        model(ids)
        times.append(time.perf_counter() - t0)
    load, first, second, third = times
    print(f"{variant:16s} load {load:.3f} s  first {first:.3f} s  second {second:.3f} s  "
          f"third {third:.3f} s  widening {model.layers.widen_seconds:.3f} s  "
          f"(load + first) / second {(load + first) / second:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.seq)
    for _ in range(args.rounds):
        for variant in VARIANTS:
            subprocess.run([sys.executable, __file__, "--child", variant, "--seq", str(args.seq)],
                           check=True)


if __name__ == "__main__":
    main()
