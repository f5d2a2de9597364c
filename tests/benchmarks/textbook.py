"""What readability costs: the textbook forward pass against the fast one, side by side (issue 14).

minilens/forward.py is the pass students read (attention as softmax(q k^T * scale + mask) @ v,
every value a fresh array, the full pattern kept); minilens/fast/forward.py computes the same
trace with the work reordered (blocked attention, in-place kernels, recycled memory, the pattern
derived only when read). ``ml.load(path)`` runs the fast one, ``ml.load(path, fast=False)`` the
textbook one. Run by hand, never in the test suite:

    python tests/benchmarks/textbook.py                    # 64, 256, 1024 tokens, 2 threads
    python tests/benchmarks/textbook.py --seq 64 --repeats 2
    python tests/benchmarks/run.py --only textbook         # the same section, from run.py

For GPT-2-small and Llama-small (run.py's random-weight checkpoints, checkpoints.py), float32,
``model.run(ids)`` (the full trace): the two passes alternate round by round in a rotating order
after a warm-up round (harness.interleaved), BLAS and torch pinned to --threads, and the table
gives the medians, the ratio textbook / fast, and the bytes each trace keeps. Before any timing
the two passes' logits must agree to 1e-4 * max(1, |logit|); the script exits 1 if they do not.
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

MB = 1024 * 1024
TOLERANCE = 1e-4          # on |textbook - fast| / max(1, |fast|), per logit


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def kept_bytes(trace) -> int:
    """The bytes of the arrays a trace holds, logits included (a deferred pattern: 0 until read)."""
    seen, total = set(), 0
    for value in [*trace._store.values(), trace.logits]:
        if isinstance(value, np.ndarray):
            # a view (pos_embed's broadcast, z's swapaxes) counts its base array, once
            base = value.base if isinstance(value.base, np.ndarray) else value
            if id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
    return total


def max_rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max(1, |ref|), in float64."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref) / np.maximum(1.0, np.abs(ref))))


def section_textbook(args, rows: list) -> bool:
    """Time textbook vs fast ``model.run(ids)``; append rows; return whether every pair agreed."""
    import minilens as ml
    all_agree = True
    for label, folder in (("GPT-2-small", checkpoints.gpt2_small()),
                          ("Llama-small", checkpoints.llama_small())):
        fast, textbook = ml.load(folder), ml.load(folder, fast=False)
        assert fast.fast and not textbook.fast
        for n_seq in args.textbook_seq:
            ids = np.random.default_rng(n_seq).integers(0, fast.cfg.d_vocab, n_seq)
            t_fast, t_text = fast.run(ids), textbook.run(ids)       # the warm-up widens every layer
            err = max_rel_diff(t_text.logits, t_fast.logits)
            agree = err <= TOLERANCE
            all_agree &= agree
            kept = {"fast": kept_bytes(t_fast), "textbook": kept_bytes(t_text)}
            del t_fast, t_text
            load_before = load_avg()
            # F821 below is a false alarm: the lambdas run in harness.interleaved, before the `del`
            passes = {"fast": lambda: fast.run(ids),  # noqa: F821
                      "textbook": lambda: textbook.run(ids)}  # noqa: F821
            times = harness.interleaved(passes, args.repeats, clock=args.clock)
            med = {k: harness.median(v) for k, v in times.items()}
            row = {"section": "textbook", "model": label, "n_seq": n_seq,
                   "fast_s": med["fast"], "textbook_s": med["textbook"],
                   "ratio": med["textbook"] / med["fast"],
                   "fast_kept": kept["fast"], "textbook_kept": kept["textbook"],
                   "max_rel_logit_diff": err, "agree": agree,
                   "load_avg_before": load_before, "load_avg_after": load_avg(),
                   "samples": {k: [round(x, 4) for x in v] for k, v in times.items()}}
            rows.append(row)
            print(f"textbook {label:12s} n_seq={n_seq:5d} fast {med['fast']:7.3f} s  "
                  f"textbook {med['textbook']:7.3f} s  x{row['ratio']:5.2f}  "
                  f"kept {kept['fast'] / MB:6.0f} / {kept['textbook'] / MB:6.0f} MB  "
                  f"logits {err:.1e} {'ok' if agree else 'DISAGREE'}  "
                  f"(load {load_before} -> {row['load_avg_after']})", flush=True)
        del fast, textbook
    return all_agree


def markdown(rows: list) -> str:
    tb = [r for r in rows if r["section"] == "textbook"]
    if not tb:
        return ""
    out = [("| model | n_seq | fast s | textbook s | textbook / fast "
            "| trace keeps MB, fast / textbook | logits max rel. diff |"),
           "|---|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {r['model']} | {r['n_seq']} | {r['fast_s']:.3f} | {r['textbook_s']:.3f} | "
            f"{r['ratio']:.2f} | {r['fast_kept'] / MB:.0f} / {r['textbook_kept'] / MB:.0f} | "
            f"{r['max_rel_logit_diff']:.1e}{'' if r['agree'] else ' DISAGREE'} |" for r in tb]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="64,256,1024", help="lengths, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    args.textbook_seq = [int(s) for s in args.seq.split(",")]
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    info = {**harness.machine(), **harness.pin_threads(args.threads)}
    print("command: python " + " ".join(sys.argv))
    for k, v in info.items():
        print(f"  {k}: {v}")
    rows: list = []
    agree = section_textbook(args, rows)
    print(f"  load_avg_at_end: {load_avg()}")
    print("\n" + markdown(rows))
    if not agree:
        print(f"FAIL: the two passes' logits differ by more than {TOLERANCE} * max(1, |logit|)")
        sys.exit(1)


if __name__ == "__main__":
    main()
