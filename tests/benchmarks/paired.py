"""Two settings of one minilens knob, in paired rounds in one process: is a small change worth it?

On a noisy machine a 2% change hides inside the spread of two separate runs. Here both settings
run in every round, one after the other (the order alternates), and the figure is the median of
the per-round ratios, with its quartiles.

    python tests/benchmarks/paired.py lens-pieces --model smollm2      # STAT_ROWS 31 against 62
    python tests/benchmarks/paired.py lens-pieces --model gpt2         # STAT_ROWS 13 against 26
    python tests/benchmarks/paired.py exp-floor --model smollm2        # lens exp floored or not
    python tests/benchmarks/paired.py f-order --model gpt2             # C- against F-ordered
    python tests/benchmarks/paired.py lens-chunk --model smollm2       # CHUNK_ELEMENTS 2^24, 2^25

  lens-pieces  ``ml.logit_lens(trace, 504)`` at 512 tokens with the statistics in pieces of one
               position (STAT_ROWS = the number of rows) against two (twice that).
  exp-floor    the same lens with its exp unfloored against floored at EXP_FLOOR (subnormals).
  lens-chunk   the same lens with CHUNK_ELEMENTS = 2^24 against 2^25: twice the positions per
               unembedding GEMM (each GEMM reads all of W_U), twice the logits buffers.
  f-order      ``model.run(ids)`` at 512 tokens with the cached layers' weight matrices as
               blas_ready(columns=True) leaves them (F-ordered) against C-ordered copies.

--model: gpt2 / llama (checkpoints.py's random GPT-2-small / Llama-small) or a fetched name.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoints
import harness


def load(name: str):
    import minilens as ml
    path = {"gpt2": checkpoints.gpt2_small, "llama": checkpoints.llama_small}.get(name)
    return ml.load(path() if path else name)


def lens_knob(model, ids, attr: str, a, b):
    """(setting A, setting B): ``ml.logit_lens(trace, 504)`` with ``lens.<attr>`` set to a, to b."""
    import minilens as ml
    from minilens.analysis import lens
    trace = model.run(ids)

    def with_value(value):
        def run():
            setattr(lens, attr, value)
            ml.logit_lens(trace, 504)
        return run
    return (f"{attr} = {a}", with_value(a)), (f"{attr} = {b}", with_value(b))


def lens_pieces(model, ids):
    """One position per piece (STAT_ROWS = the number of rows), two."""
    rows = model.cfg.n_layers + 1
    return lens_knob(model, ids, "STAT_ROWS", rows, 2 * rows)


def exp_floor(model, ids):
    """The lens's exp without a floor (-inf), with EXP_FLOOR (-87)."""
    return lens_knob(model, ids, "EXP_FLOOR", -np.inf, -87.0)


def lens_chunk(model, ids):
    """The lens's chunks of 2^24 logits, of 2^25."""
    return lens_knob(model, ids, "CHUNK_ELEMENTS", 1 << 24, 1 << 25)


def f_order(model, ids):
    """(setting A, setting B): C-ordered weight matrices, F-ordered (as loaded)."""
    model.run(ids[:8])
    as_loaded = [model.layers[l] for l in range(model.cfg.n_layers)]

    def c_ordered(p):
        p = copy.copy(p)
        for f in dataclasses.fields(p):
            a = getattr(p, f.name)
            if isinstance(a, np.ndarray) and a.ndim == 2 and f.name != "W_gate_in":
                setattr(p, f.name, np.ascontiguousarray(a))
        return p
    c_layers = [c_ordered(p) for p in as_loaded]

    def with_layers(layers):
        def run():
            model.layers._cache.update(dict(enumerate(layers)))
            model.run(ids)
        return run
    return ("C-ordered", with_layers(c_layers)), ("F-ordered (as loaded)", with_layers(as_loaded))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("knob", choices=["lens-pieces", "exp-floor", "lens-chunk", "f-order"])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    harness.pin_threads(args.threads)
    model = load(args.model)
    ids = np.random.default_rng(0).integers(0, model.cfg.d_vocab, 512)
    knobs = {"lens-pieces": lens_pieces, "exp-floor": exp_floor, "lens-chunk": lens_chunk,
             "f-order": f_order}
    (name_a, a), (name_b, b) = knobs[args.knob](model, ids)
    a(), b()                                                       # warm-up
    times = {name_a: [], name_b: []}
    for r in range(args.rounds):
        for name, fn in ([(name_a, a), (name_b, b)] if r % 2 else [(name_b, b), (name_a, a)]):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ratios = np.array(times[name_b]) / np.array(times[name_a])
    print(f"{args.knob}, {args.model}, {args.rounds} rounds, {args.threads} threads")
    for name in (name_a, name_b):
        print(f"  {name:32s} median {np.median(times[name]):.3f} s")
    q1, q3 = np.percentile(ratios, [25, 75])
    print(f"  B / A per round: median {np.median(ratios):.3f} (quartiles {q1:.3f} to {q3:.3f})")


if __name__ == "__main__":
    main()
