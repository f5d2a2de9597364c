"""Where a forward pass's time goes, by operation (issue 6).

Wraps the fast forward pass's ``linear`` (the GEMMs, their bias adds and output allocations; the
unembedding included), ``attend`` and ``norm`` (all in minilens.fast.forward, the default pass
since the readable-forward split) with timers, runs GPT-2-small at 512 tokens 5 times
(--seq, --repeats), and prints the mean time of each part and the rest (GELU, residual adds,
copies, page faults outside these functions). Two process states, each in this process: ``fresh``
(load, run) and ``--widened`` (every layer widened before the first run, which leaves glibc's
malloc trimming and re-faulting the temporaries; see page_faults.py).

``--textbook`` times the textbook pass instead (minilens/forward.py, ``ml.load(path, fast=False)``):
its ``linear`` (every GEMM but the two attention products), ``softmax``, ``norm`` and the MLP's
activation; "rest" is then mostly attention's own products (q k^T, pattern v), the mask add, the
residual adds and the page faults of its fresh arrays. ``--model llama`` uses Llama-small,
``--model smollm2`` the fetched SmolLM2 GGUF. The fast pass's RoPE and MLP activation (SiLU or
GELU, without the gate product) are timed too.
``--clock cpu`` times this process's CPU time (for a machine shared with other jobs, at 1 thread).
The fast pass runs in one worker here (MINILENS_WORKERS=1, fast/workers.py): with several, the
timed functions run in several threads at once and their times would add up past the wall clock.

Run by hand:  python tests/benchmarks/breakdown.py [--widened] [--threads 2] [--seq N] [--repeats N]
              python tests/benchmarks/breakdown.py --textbook --seq 1024 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--textbook", action="store_true", help="time minilens/forward.py instead")
    ap.add_argument("--model", choices=["gpt2", "llama", "smollm2"], default="gpt2",
                    help="smollm2: the fetched GGUF model (minilens fetch smollm2)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    harness.pin_threads(args.threads)
    os.environ["MINILENS_WORKERS"] = "1"            # read when minilens.fast.workers is imported
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    import minilens as ml

    if args.textbook:                      # the module whose globals the timed pass calls
        from minilens import forward as M
    else:
        from minilens.fast import forward as M
    folder = {"gpt2": checkpoints.gpt2_small, "llama": checkpoints.llama_small,
              "smollm2": lambda: "smollm2"}[args.model]()
    model = ml.load(folder, fast=not args.textbook)
    if args.widened:
        list(model.layers)
    ids = np.random.default_rng(args.seq).integers(0, model.cfg.d_vocab, args.seq)
    spent: dict[str, float] = {}

    def wrap(fn, label: str):
        def wrapper(*a, **k):
            t0 = clock()
            result = fn(*a, **k)
            spent[label] = spent.get(label, 0.0) + clock() - t0
            return result
        return wrapper

    def timed(name: str, label: str) -> None:
        setattr(M, name, wrap(getattr(M, name), label))

    timed("linear", "linear")
    timed("norm", "norms")
    if args.textbook:
        timed("softmax", "softmax")
        # forward.mlp looks its activation up in the module's ACTIVATIONS: a wrapped copy
        M.ACTIVATIONS = {k: wrap(f, "activation") for k, f in M.ACTIVATIONS.items()}
    else:
        timed("attend", "attention")
        from minilens.fast import kernels
        if model.cfg.positional == "rope":
            setattr(kernels, "apply_rope", wrap(kernels.apply_rope, "rope"))
        # fast.forward.mlp looks its activation up in kernels.ACTIVATIONS: a wrapped copy
        kernels.ACTIVATIONS = {k: wrap(f, "activation") for k, f in kernels.ACTIVATIONS.items()}
    state = ("textbook " if args.textbook else "") + ("widened first" if args.widened else "fresh")
    print(f"# {args.model}, {args.seq} tokens, {args.threads} threads, {args.clock} clock, "
          f"means of {args.repeats}")
    for what, fn in (("run (full trace)", lambda: model.run(ids)),
                     ("model(ids) (logits only)", lambda: model(ids))):
        fn()
        spent.clear()
        t0 = clock()
        for _ in range(args.repeats):
            fn()
        total = (clock() - t0) / args.repeats
        parts = {k: v / args.repeats for k, v in spent.items()}
        print(f"{state:22s} {what:26s} total {total:.3f} s  "
              + "  ".join(f"{k} {v:.3f}" for k, v in parts.items())
              + f"  rest {total - sum(parts.values()):.3f}", flush=True)


if __name__ == "__main__":
    main()
