"""The lens statistics' passes, one by one, on one chunk of GPT-2-shaped logits (issue 6).

A chunk is what ``minilens.analysis.lens`` works on at once: 13 rows x 25 positions = 325 rows of
50257 logits (64 MB in float32). This prints the best of 7 for:

- the group maxima of the top-k: a max over each contiguous run of 256 logits, against an
  element-wise max of 32 interleaved slices (what ``top_k_by_group_maxima`` does);
- the target's rank: ``count_nonzero(..., axis=-1)`` against a row-by-row ``count_nonzero``;
- ``position_statistics`` over the whole chunk in pieces of 2 positions, on 1 and on 2 threads,
  right after an unembedding GEMM on --threads BLAS threads (OpenBLAS's idle workers spin after
  a GEMM; compare with OPENBLAS_THREAD_TIMEOUT=4 in the environment).

Run by hand:  python tests/benchmarks/lens_passes.py [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def best_ms(fn, repeats: int = 7, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    harness.pin_threads(args.threads)
    from minilens.analysis import lens

    R, c, V, d = 13, 25, 50257, 768
    rng = np.random.default_rng(0)
    W_U = rng.standard_normal((d, V), dtype=np.float32) * 0.1
    x = rng.standard_normal((R * c, d), dtype=np.float32)
    logits, exp = np.empty((R * c, V), np.float32), np.empty((R * c, V), np.float32)
    np.matmul(x, W_U, out=logits)
    target = rng.integers(0, V, c)
    t = logits[:, 7].copy()

    print(f"# one chunk: {R * c} x {V} float32 logits, BLAS threads {args.threads}")
    n = V // 256
    print(f"group maxima, contiguous runs of 256    "
          f"{best_ms(lambda: logits[:, :n * 256].reshape(-1, n, 256).max(-1)):7.2f} ms")
    n = V // 32
    print(f"group maxima, 32 interleaved slices     "
          f"{best_ms(lambda: logits[:, :n * 32].reshape(-1, 32, n).max(-2)):7.2f} ms")
    print(f"rank, count_nonzero(axis=-1)            "
          f"{best_ms(lambda: np.count_nonzero(logits > t[:, None], axis=-1)):7.2f} ms")
    print(f"rank, row by row                        "
          f"{best_ms(lambda: [np.count_nonzero(row > v) for row, v in zip(logits, t)]):7.2f} ms")

    pool = ThreadPoolExecutor(2)

    def statistics(n_threads: int):
        l3, e3 = logits.reshape(R, c, V), exp.reshape(R, c, V)
        pieces = [(l3[:, a:a + 2], target[a:a + 2], 5, e3[:, a:a + 2]) for a in range(0, c, 2)]
        if n_threads == 1:
            return lambda: [lens.position_statistics(*p) for p in pieces]
        return lambda: list(pool.map(lambda p: lens.position_statistics(*p), pieces))

    # the GEMM right before, as in the lens
    refill = lambda: np.matmul(x, W_U, out=logits)  # noqa: E731
    for n_threads in (1, 2):
        print(f"statistics after a GEMM, {n_threads} thread{'s' if n_threads > 1 else ' '}      "
              f"{best_ms(statistics(n_threads), before=refill):7.2f} ms")
    pool.shutdown()


if __name__ == "__main__":
    main()
