"""One worker or two (minilens/fast/workers.py), by sequence length: where WORKER_MIN_ROWS
comes from.

    python tests/benchmarks/workers.py --seq 64,128,256,384,512,1024

For SmolLM2 (``minilens fetch smollm2``), GPT-2-small and Llama-small (random weights,
checkpoints.py), ``model(ids)`` with ``workers.n_workers`` forced to 1 and to 2 and the row
threshold off (``fast.forward.WORKER_MIN_ROWS = 0``), alternating, after a warm-up; median of
--repeats. One worker runs with BLAS threaded as numpy set it (--threads). Run by hand, quiet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoints
import harness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", default="64,128,256,384,512,1024")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    harness.pin_threads(args.threads)
    import minilens as ml
    from minilens.fast import forward, workers
    forward.WORKER_MIN_ROWS = 0
    real = workers.n_workers
    models = {"SmolLM2": "smollm2", "GPT-2-small": checkpoints.gpt2_small(),
              "Llama-small": checkpoints.llama_small()}
    print("| tokens | " + " | ".join(f"{name} 1 / 2 workers" for name in models) + " |")
    print("|---:|" + "---:|" * len(models))
    loaded = {name: ml.load(path) for name, path in models.items()}
    for n_seq in [int(x) for x in args.seq.split(",")]:
        cells = []
        for model in loaded.values():
            ids = np.random.default_rng(0).integers(0, model.cfg.d_vocab, n_seq)
            times: dict[int, list] = {1: [], 2: []}
            for round_ in range(args.repeats + 1):
                for n in (1, 2):
                    workers.n_workers = lambda n=n: min(n, real())
                    t0 = time.perf_counter()
                    model(ids)
                    if round_:                          # round 0 warms up
                        times[n].append(time.perf_counter() - t0)
            cells.append(f"{np.median(times[1]):.3f} / {np.median(times[2]):.3f} s")
        print(f"| {n_seq} | " + " | ".join(cells) + " |", flush=True)
    workers.n_workers = real


if __name__ == "__main__":
    main()
