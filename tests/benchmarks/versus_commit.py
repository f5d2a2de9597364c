"""This tree's forward pass against an earlier commit's, side by side in one process.

Ratios against transformers or the GEMM floor move with the machine (the BLAS kernel OpenBLAS
picks, other jobs), so "did this change slow minilens down?" is best answered by running both
versions in the same rounds. The commit's ``minilens/`` is extracted with ``git archive`` into a
temporary folder as the package ``minilens_at_<commit>`` (minilens imports itself relatively, so
it runs under any name); nothing in the repository is touched. Run by hand:

    python tests/benchmarks/versus_commit.py 721f039^        # the last commit before the split
    python tests/benchmarks/versus_commit.py HEAD~3 --seq 128,512 --repeats 9
    python tests/benchmarks/versus_commit.py 721f039^ --threads 1 --clock cpu   # a busy machine

For GPT-2-small and Llama-small (checkpoints.py), float32, --threads BLAS/torch threads: both
versions' ``model.run(ids)`` (full trace) and ``model(ids)`` (logits only), and run.py's GEMM
floor, in rotating order after a warm-up round (harness.interleaved). The two versions' logits
must agree to 1e-4 * max(1, |logit|).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import checkpoints  # noqa: E402
import harness  # noqa: E402
from run import forward_gemm_floor  # noqa: E402
from textbook import TOLERANCE, load_avg, max_rel_diff  # noqa: E402


def import_commit(commit: str, into: Path):
    """``minilens/`` as of ``commit``, imported as the package minilens_at_<sha>."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", commit], check=True,
                         capture_output=True, text=True).stdout.strip()
    tar = subprocess.run(["git", "-C", str(REPO), "archive", sha, "minilens"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(tar)) as tf:
        tf.extractall(into, filter="data")
    name = f"minilens_at_{sha}"
    (into / "minilens").rename(into / name)
    sys.path.insert(0, str(into))
    return sha, importlib.import_module(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("commit", nargs="?", default="721f039^")
    ap.add_argument("--seq", default="512")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    info = {**harness.machine(), **harness.pin_threads(args.threads)}
    print("command: python " + " ".join(sys.argv))
    for k, v in info.items():
        print(f"  {k}: {v}")
    import minilens as ml
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        sha, old_ml = import_commit(args.commit, Path(tmp))
        for label, folder in (("GPT-2-small", checkpoints.gpt2_small()),
                              ("Llama-small", checkpoints.llama_small())):
            new, old = ml.load(folder), old_ml.load(folder)
            for n_seq in [int(s) for s in args.seq.split(",")]:
                ids = np.random.default_rng(n_seq).integers(0, new.cfg.d_vocab, n_seq)
                err = max_rel_diff(old.run(ids).logits, new.run(ids).logits)
                ok &= err <= TOLERANCE
                # F821 is a false alarm: the lambdas run in harness.interleaved, before the `del`
                contenders = {
                    "this tree: run (full trace)": lambda: new.run(ids),  # noqa: F821
                    f"{sha}: run (full trace)": lambda: old.run(ids),  # noqa: F821
                    "this tree: model(ids)": lambda: new(ids),  # noqa: F821
                    f"{sha}: model(ids)": lambda: old(ids),  # noqa: F821
                    "GEMM floor (numpy)": forward_gemm_floor(new.cfg, n_seq),
                }
                before = load_avg()
                times = harness.interleaved(contenders, args.repeats, clock=clock)
                med = {k: harness.median(v) for k, v in times.items()}
                floor = med["GEMM floor (numpy)"]
                for name, t in med.items():
                    rows.append(f"| {label} | {n_seq} | {name} | {t:.3f} | {t / floor:.2f} |")
                    print(f"{label:12s} {n_seq:5d} {name:30s} {t:7.3f} s  x{t / floor:5.2f} of "
                          f"floor  {[round(x, 3) for x in times[name]]}", flush=True)
                print(f"  logits, {sha} vs this tree: {err:.1e}; load {before} -> {load_avg()}")
            del new, old
    print(f"  load_avg_at_end: {load_avg()}\n")
    print("| model | n_seq | contender | median s | x GEMM floor |\n|---|---:|---|---:|---:|")
    print("\n".join(rows))
    if not ok:
        sys.exit(f"FAIL: the versions' logits differ by more than {TOLERANCE} * max(1, |logit|)")


if __name__ == "__main__":
    main()
