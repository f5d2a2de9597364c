"""The tuned lens on SmolLM2 (issue 16): logit, affine and tuned lens, per layer, on held-out text.

    minilens fetch smollm2
    python tests/benchmarks/tuned_lens.py                      # ~26k training tokens, 4k held out
    python tests/benchmarks/tuned_lens.py --tokens 8000 --heldout 1024 --steps 10   # a quick look
    python tests/benchmarks/tuned_lens.py --tokens 250000 --fit-only    # fit time and peak RSS

Fits the affine lens (ridge toward the identity, the ridge chosen per layer on held-out windows of
the training text), refines it by the KL gradient (``--steps`` x ``--batch`` tokens, Adam at
``--lr``), and evaluates all three on the held-out split of ``lens_corpus`` (Hamlet, Julius
Caesar, Twelfth Night, and the stdlib modules random, shutil, tokenize), which no fit has seen.
Prints the per-layer table and the two ratios against the targets (affine mean KL <= 0.25x the
logit lens's, tuned <= 0.9x the affine's), and writes into ``--out``: results.json, kl.html (the
plot and the table), affine.safetensors and tuned.safetensors.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

import minilens as ml
from minilens.analysis.tuned_lens import (
    evaluate_lens,
    fit_affine_lens,
    lens_corpus,
    refine_lens,
)
from minilens.show.lens_plots import evaluation_table, kl_plot_html


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=26_000, help="training tokens (affine fit)")
    ap.add_argument("--heldout", type=int, default=4096, help="held-out tokens (evaluation)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="tuned_lens_results")
    ap.add_argument("--fit-only", action="store_true",
                    help="fit and refine, report the time and the peak RSS, evaluate nothing")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()

    def progress(message: str) -> None:                 # with the time and the peak RSS so far
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"[{time.time() - t0:7.0f} s, peak RSS {peak_mb:6.0f} MB] {message}",
              file=sys.stderr, flush=True)

    model = ml.load(args.model)
    train, train_desc = lens_corpus("train")
    held, held_desc = lens_corpus("heldout")
    affine = fit_affine_lens(model, train, max_tokens=args.tokens, data=train_desc,
                             progress=progress)
    t_affine = time.time() - t0
    tuned = refine_lens(model, affine, train, steps=args.steps, batch=args.batch, lr=args.lr,
                        progress=progress)
    t_tuned = time.time() - t0 - t_affine
    affine.save(out / "affine.safetensors")
    tuned.save(out / "tuned.safetensors")
    if args.fit_only:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"fit only: {affine.info['tokens']} tokens; affine {t_affine:.0f} s, refinement "
              f"{t_tuned:.0f} s ({args.steps} steps x {args.batch} tokens); peak RSS "
              f"{peak_mb:.0f} MB; wrote {out}/affine.safetensors, tuned.safetensors")
        return 0
    evals = {name: evaluate_lens(model, lens, held, max_tokens=args.heldout)
             for name, lens in (("logit", None), ("affine", affine), ("tuned", tuned))}
    t_eval = time.time() - t0 - t_affine - t_tuned

    table = evaluation_table(evals)
    r_affine = evals["affine"].mean_kl() / evals["logit"].mean_kl()
    r_tuned = evals["tuned"].mean_kl() / evals["affine"].mean_kl()
    command = "python tests/benchmarks/tuned_lens.py " + " ".join(sys.argv[1:])
    summary = (f"mean KL over layers 0..{model.cfg.n_layers - 1}: logit "
               f"{evals['logit'].mean_kl():.4f}, affine {evals['affine'].mean_kl():.4f}, tuned "
               f"{evals['tuned'].mean_kl():.4f} nats\n"
               f"affine / logit = {r_affine:.3f} (target <= 0.25: "
               f"{'met' if r_affine <= 0.25 else 'MISSED'})\n"
               f"tuned / affine = {r_tuned:.3f} (target <= 0.9: "
               f"{'met' if r_tuned <= 0.9 else 'MISSED'})")
    print(f"$ {command}\n{table}\n{summary}")
    print(f"training: {affine.info['tokens']} tokens ({affine.info['heldout_tokens']} of them "
          f"held out to choose the ridge, then refit on all); refinement: {args.steps} steps x "
          f"{args.batch} tokens, lr {args.lr:g}; evaluation: {evals['logit'].n_tokens} held-out "
          f"tokens in {evals['logit'].n_texts} texts\nridge per layer: {affine.info['ridge']}\n"
          f"time: affine {t_affine:.0f} s, refinement {t_tuned:.0f} s, evaluation "
          f"{t_eval:.0f} s")
    (out / "results.json").write_text(json.dumps(dict(
        command=command, model=args.model, train=train_desc, heldout=held_desc,
        args=vars(args), ratios=dict(affine_over_logit=r_affine, tuned_over_affine=r_tuned),
        ridge=affine.info["ridge"], ridge_grid=affine.info["ridge_grid"],
        ridge_mse=affine.info["ridge_mse"], seconds=dict(affine=t_affine, tuned=t_tuned,
                                                         evaluation=t_eval),
        machine=dict(python=platform.python_version(), numpy=np.__version__),
        evaluations={k: e.to_dict() for k, e in evals.items()}), indent=1))
    (out / "kl.html").write_text(kl_plot_html(
        evals, title=f"{args.model}: KL to the final layer on held-out text",
        note=f"{held_desc}; {evals['logit'].n_tokens} tokens. {command}"))
    print(f"wrote {out}/results.json, kl.html, affine.safetensors, tuned.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
