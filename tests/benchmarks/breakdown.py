"""Where a forward pass's time goes, by operation (issue 6).

Wraps the fast forward pass's ``linear`` (the GEMMs, their bias adds and output allocations; the
unembedding included), ``causal_attention`` and ``norm`` (all in minilens.fast.forward, the default
pass since the readable-forward split) with timers, runs GPT-2-small at 512 tokens 5 times
(--seq, --repeats), and prints the mean time of each part and the rest (GELU, residual adds,
copies, page faults outside these functions). Two process states, each in this process: ``fresh``
(load, run) and ``--widened`` (every layer widened before the first run, which leaves glibc's
malloc trimming and re-faulting the temporaries; see page_faults.py).

Run by hand:  python tests/benchmarks/breakdown.py [--widened] [--threads 2] [--seq N] [--repeats N]
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
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widened", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    harness.pin_threads(args.threads)
    import minilens as ml
    from minilens.fast import forward as M  # the module whose globals the fast pass calls

    model = ml.load(checkpoints.gpt2_small())
    if args.widened:
        list(model.layers)
    ids = np.random.default_rng(args.seq).integers(0, model.cfg.d_vocab, args.seq)
    spent: dict[str, float] = {}

    def timed(name: str, label: str) -> None:
        fn = getattr(M, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            result = fn(*a, **k)
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
            return result
        setattr(M, name, wrapper)

    timed("linear", "linear")
    timed("causal_attention", "attention")
    timed("norm", "norms")
    state = "widened first" if args.widened else "fresh"
    for what, fn in (("run (full trace)", lambda: model.run(ids)),
                     ("model(ids) (logits only)", lambda: model(ids))):
        fn()
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        total = (time.perf_counter() - t0) / args.repeats
        parts = {k: v / args.repeats for k, v in spent.items()}
        print(f"{state:13s} {what:26s} total {total:.3f} s  "
              + "  ".join(f"{k} {v:.3f}" for k, v in parts.items())
              + f"  rest {total - sum(parts.values()):.3f}", flush=True)


if __name__ == "__main__":
    main()
