"""How often attention's softmax may skip subtracting the row max (fast/forward.pattern_rows).

pattern_rows bounds each kv head's scores by its longest q times its longest k (Cauchy-Schwarz);
where that bound is at most kernels.EXP_SAFE, exp cannot overflow or vanish and the max is not
subtracted. This counts, over one forward pass, the score entries (masked ones included) on each
side of that decision.

    python tests/benchmarks/softmax_shift.py                       # SmolLM2, real text, 512 tokens
    python tests/benchmarks/softmax_shift.py --random              # random token ids instead

The text is "The capital of France is Paris. " repeated and cut to --seq tokens.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--random", action="store_true", help="random token ids, not text")
    args = ap.parse_args()

    import minilens as ml
    from minilens.fast import kernels
    model = ml.load(args.model)
    if args.random:
        ids = np.random.default_rng(0).integers(0, model.cfg.d_vocab, args.seq)
    else:
        ids = np.asarray(model.tokenizer.encode("The capital of France is Paris. " * args.seq))
        ids = ids[:args.seq]
    counts = {"skip": 0, "shift": 0}
    softmax = kernels.softmax_in_place

    def counting(x, bound=np.inf):
        counts["skip" if bound <= kernels.EXP_SAFE else "shift"] += x.size
        return softmax(x, bound)
    kernels.softmax_in_place = counting
    model.run(ids)
    total = counts["skip"] + counts["shift"]
    print(f"{args.model}, {len(ids)} tokens ({'random ids' if args.random else 'text'}): "
          f"{counts['skip'] / total:.1%} of {total} score entries skip the max, "
          f"{counts['shift'] / total:.1%} subtract it")


if __name__ == "__main__":
    main()
