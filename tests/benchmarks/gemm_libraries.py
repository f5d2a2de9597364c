"""numpy's matrix products against torch's, on the forward pass's own shapes: how much of the gap
to transformers is the BLAS library (issues 13 and 14, "at most 1.0x transformers").

    python tests/benchmarks/gemm_libraries.py [--threads 2] [--seq 512] [--repeats 9]

minilens multiplies with numpy's BLAS (OpenBLAS, as numpy's wheels ship it); transformers with
torch's (MKL on x86). Both take the same float32 matrices here. Two tables, contenders
interleaved round by round (harness.interleaved), medians:

  per product  each distinct product of one layer of SmolLM2 at --seq tokens (Q|K|V, the
               scores of one kv group, pattern @ v, W_O, [W_gate W_in], W_out, and the
               unembedding), BLAS on ONE thread, np.matmul(out=) against torch.mm(out=); GFLOP/s of
               each.
  floors       run.forward_gemm_floor (the forward's products alone) with numpy's matmul and
               with torch's, on --threads threads, against transformers' whole forward
               (sdpa, use_cache=False, no hidden states) on the same model: SmolLM2 (the GGUF
               that ``minilens fetch smollm2`` downloads, read by transformers), GPT-2-small and
               Llama-small (checkpoints.py's random ones).

    python tests/benchmarks/gemm_libraries.py --coretypes Haswell SkylakeX Cooperlake SapphireRapids

instead times numpy alone on the same products, one fresh process per OpenBLAS kernel
(OPENBLAS_CORETYPE; the kernel OpenBLAS actually selects is printed beside it), one thread.

The models need the test extra (torch, transformers, gguf) and ``minilens fetch smollm2``.
Run by hand on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoints
import harness
import run
import smollm2


def medians(contenders: dict, repeats: int) -> dict[str, float]:
    return {name: harness.median(times)
            for name, times in harness.interleaved(contenders, repeats).items()}


def products(cfg, n_seq: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(name, A shape, B shape) of one layer's distinct products, plus the unembedding."""
    d, H, Hkv, dh, m, V = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp,
                           cfg.d_vocab)
    group = H // Hkv
    return [("x @ [W_Q W_K W_V]", (n_seq, d), (d, (H + 2 * Hkv) * dh)),
            ("q @ k^T (one kv group)", (group * n_seq, dh), (dh, n_seq)),
            ("pattern @ v (one head)", (n_seq, n_seq), (n_seq, dh)),
            ("z @ W_O", (n_seq, H * dh), (H * dh, d)),
            ("x @ [W_gate W_in]", (n_seq, d), (d, 2 * m if cfg.gated_mlp else m)),
            ("mlp_post @ W_out", (n_seq, m), (m, d)),
            ("x @ W_U", (n_seq, d), (d, V))]


def section_products(cfg, args) -> list[str]:
    import torch
    harness.pin_threads(1)
    rng = np.random.default_rng(0)
    title = (f"## One thread: each product of SmolLM2 at {args.seq} tokens, "
             f"medians of {args.repeats}")
    header = ("| product | shape | numpy ms | torch ms | numpy GFLOP/s | torch GFLOP/s "
              "| numpy / torch |")
    lines = [title, "", header, "|---|---|---:|---:|---:|---:|---:|"]
    for name, (M, K), (_, N) in products(cfg, args.seq):
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32)
        out = np.empty((M, N), np.float32)
        ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.empty(M, N)
        t = medians({"numpy": lambda: np.matmul(a, b, out=out),
                     "torch": lambda: torch.mm(ta, tb, out=tout)}, args.repeats)
        gflop = 2 * M * K * N / 1e9
        lines.append(f"| {name} | {M} x {K} @ {K} x {N} | {t['numpy'] * 1e3:.2f} | "
                     f"{t['torch'] * 1e3:.2f} | {gflop / t['numpy']:.0f} | "
                     f"{gflop / t['torch']:.0f} | {t['numpy'] / t['torch']:.2f} |")
    return lines


def section_floors(args) -> list[str]:
    import minilens as ml
    harness.pin_threads(args.threads)
    title = (f"## {args.threads} threads: the forward's products alone, at {args.seq} tokens, "
             f"against transformers' whole forward (sdpa), medians of {args.repeats}")
    header = ("| model | numpy products s | torch products s | transformers forward s "
              "| numpy / torch products | numpy products / transformers "
              "| torch products / transformers |")
    lines = [title, "", header, "|---|---:|---:|---:|---:|---:|---:|"]
    path = smollm2.model_path("smollm2")
    models = {"SmolLM2-135M": (ml.load(path).cfg, lambda: smollm2.load_hf_gguf(path, "sdpa")),
              "GPT-2-small": (ml.load(checkpoints.gpt2_small()).cfg,
                              lambda: run.load_hf(checkpoints.gpt2_small(), "sdpa")),
              "Llama-small": (ml.load(checkpoints.llama_small()).cfg,
                              lambda: run.load_hf(checkpoints.llama_small(), "sdpa"))}
    for name, (cfg, load_hf) in models.items():
        ids = np.random.default_rng(0).integers(0, cfg.d_vocab, args.seq)
        t = medians({"numpy": run.forward_gemm_floor(cfg, args.seq),
                     "torch": run.forward_gemm_floor(cfg, args.seq, library="torch"),
                     "transformers": smollm2.hf_logits(load_hf(), ids)}, args.repeats)
        lines.append(f"| {name} | {t['numpy']:.3f} | {t['torch']:.3f} | {t['transformers']:.3f} "
                     f"| {t['numpy'] / t['torch']:.2f} | {t['numpy'] / t['transformers']:.2f} "
                     f"| {t['torch'] / t['transformers']:.2f} |")
    return lines


def numpy_products_ms(cfg, n_seq: int, repeats: int) -> tuple[str, list[float]]:
    """(the OpenBLAS kernel in use, numpy's median ms on each product), on one thread."""
    info = harness.pin_threads(1)
    rng = np.random.default_rng(0)
    times = []
    for _, (M, K), (_, N) in products(cfg, n_seq):
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32)
        out = np.empty((M, N), np.float32)
        times.append(medians({"numpy": lambda: np.matmul(a, b, out=out)}, repeats)["numpy"] * 1e3)
    return info["numpy_blas"], times


def section_coretypes(cfg, args) -> list[str]:
    """One fresh process per OPENBLAS_CORETYPE (OpenBLAS reads it once, when numpy loads it)."""
    title = f"## numpy's products on one thread, by OpenBLAS kernel, ms (medians of {args.repeats})"
    lines = [title, "", "| OPENBLAS_CORETYPE | kernel in use | "
             + " | ".join(name for name, _, _ in products(cfg, args.seq)) + " |",
             "|---|---|" + "---:|" * len(products(cfg, args.seq))]
    for coretype in args.coretypes:
        env = dict(os.environ, OPENBLAS_CORETYPE=coretype)
        child = subprocess.run([sys.executable, __file__, "--child-coretype", "--seq",
                                str(args.seq), "--repeats", str(args.repeats)],
                               env=env, capture_output=True, text=True, check=True)
        kernel, times = json.loads(child.stdout.strip().splitlines()[-1])
        lines.append(f"| {coretype} | {kernel} | " + " | ".join(f"{t:.2f}" for t in times) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--coretypes", nargs="+", metavar="CORETYPE")
    ap.add_argument("--child-coretype", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import minilens as ml
    if args.child_coretype:
        cfg = ml.load(smollm2.model_path("smollm2")).cfg
        print(json.dumps(numpy_products_ms(cfg, args.seq, args.repeats)))
        return
    info = harness.machine()
    print(f"# {info['cpu']} ({info['nproc']} cores), numpy {info['numpy']}, "
          f"torch {info.get('torch')}, transformers {info.get('transformers')}; "
          f"load average at start {info['load_avg_at_start']}")
    print(f"# numpy's BLAS: {harness.pin_threads(1)['numpy_blas']}\n")
    cfg = ml.load(smollm2.model_path("smollm2")).cfg
    if args.coretypes:
        print("\n".join(section_coretypes(cfg, args)))
        return
    print("\n".join(section_products(cfg, args)), "\n", flush=True)
    print("\n".join(section_floors(args)))


if __name__ == "__main__":
    main()
