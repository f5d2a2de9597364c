"""Benchmarks: minilens against transformers, TransformerLens and the matrix-multiplication floor.

Run by hand, never in the test suite (issue 6):

    python tests/benchmarks/run.py                      # everything, about 15-25 minutes on 2 cores
    python tests/benchmarks/run.py --only forward --seq 512 --repeats 5
    python tests/benchmarks/run.py --only lens
    python tests/benchmarks/run.py --only bigload
    python tests/benchmarks/run.py --only textbook      # textbook.py's section (not by default)

Sections
  forward  minilens ``model.run`` (the full trace) vs transformers with
           ``output_hidden_states=True`` (eager and sdpa attention) vs the GEMM floor (the same
           matrix products alone, in numpy), on GPT-2-small shapes and on a Llama of similar size.
  lens     ``ml.logit_lens`` (all rows, all positions, top-5, entropy, KL, target statistics) vs
           TransformerLens 4.3's ``transformer_lens.tools.analysis.logit_lens`` (top-5 and entropy)
           vs plain torch ``lm_head(ln_f(stack(hidden_states)))`` with the same statistics, vs the
           unembedding GEMM floor. Time in one process, interleaved; memory in a fresh subprocess
           per contender (kernel-measured peak RSS above the RSS before the call, and
           tracemalloc).
  bigload  a TinyLlama-1.1B-shaped bf16 checkpoint: time to load, time and peak RSS of a 128-token
           forward, for minilens and for transformers (float32, so the logits can be compared), each
           in a fresh subprocess; then the logits are compared at float32 tolerance.
  textbook minilens's textbook pass (forward.py, ``ml.load(path, fast=False)``) against the fast
           one (fast/forward.py, the default), full trace, at --textbook-seq (textbook.py).

Every ratio is measured within one run: contenders alternate round by round (rotating order) after
a warm-up round, numpy's BLAS and torch both pinned to --threads threads. Checkpoints have random
weights and are built on first use into ~/.cache/minilens-bench (see checkpoints.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import checkpoints  # noqa: E402
import harness  # noqa: E402
import textbook  # noqa: E402

MB = 1024 * 1024


# ------------------------------------------------------------------------------------------
# GEMM floors: the forward's and the lens's matrix products, timed alone with preallocated outputs
# ------------------------------------------------------------------------------------------

def forward_gemm_floor(cfg, n_seq: int, dtype=np.float32, library: str = "numpy"):
    """A function doing exactly the forward's matrix products (full n_seq x n_seq scores), nothing
    else, with numpy's matmul or (``library="torch"``) torch's, on the same matrices.

    QKV is one fused product (the cheapest way to do it), the gated MLP's two input products too.
    """
    rng = np.random.default_rng(0)
    d, H, Hkv, dh, m, V = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp,
                           cfg.d_vocab)
    n_in = 2 * m if cfg.gated_mlp else m

    def r(*shape):
        return rng.standard_normal(shape, dtype=dtype)

    x, W_QKV, W_O, W_in, W_out = (r(n_seq, d), r(d, (H + 2 * Hkv) * dh), r(H * dh, d),
                                  r(d, n_in), r(m, d))
    W_U = r(d, V)
    q, k_T, v = r(H, n_seq, dh), r(H, dh, n_seq), r(H, n_seq, dh)
    qkv, scores, z = (np.empty((n_seq, W_QKV.shape[1]), dtype),
                      np.empty((H, n_seq, n_seq), dtype), np.empty((H, n_seq, dh), dtype))
    o, hidden, out, logits = (np.empty((n_seq, d), dtype), np.empty((n_seq, n_in), dtype),
                              np.empty((n_seq, d), dtype), np.empty((n_seq, V), dtype))
    zz = r(n_seq, H * dh)
    mlp_post = r(n_seq, m)
    matmul = np.matmul
    if library == "torch":
        import torch
        matmul = torch.matmul
        (x, W_QKV, W_O, W_in, W_out, W_U, q, k_T, v, qkv, scores, z, o, hidden, out, logits, zz,
         mlp_post) = (torch.from_numpy(a) for a in (x, W_QKV, W_O, W_in, W_out, W_U, q, k_T, v,
                                                     qkv, scores, z, o, hidden, out, logits, zz,
                                                     mlp_post))

    def run():
        for _ in range(cfg.n_layers):
            matmul(x, W_QKV, out=qkv)
            matmul(q, k_T, out=scores)
            matmul(scores, v, out=z)
            matmul(zz, W_O, out=o)
            matmul(x, W_in, out=hidden)
            matmul(mlp_post, W_out, out=out)
        matmul(x, W_U, out=logits)
    return run


def lens_gemm_floor(cfg, n_rows: int, n_seq: int, dtype=np.float32, chunk_rows: int = 256):
    """The lens's unembedding alone: [n_rows * n_seq, d_model] @ W_U in chunks, into one reused
    buffer."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_rows * n_seq, cfg.d_model), dtype=dtype)
    W_U = rng.standard_normal((cfg.d_model, cfg.d_vocab), dtype=dtype)
    buf = np.empty((chunk_rows, cfg.d_vocab), dtype)

    def run():
        for start in range(0, len(x), chunk_rows):
            chunk = x[start:start + chunk_rows]
            np.matmul(chunk, W_U, out=buf[:len(chunk)])
    return run


# ------------------------------------------------------------------------------------------
# Contenders
# ------------------------------------------------------------------------------------------

def load_hf(folder: Path, attn: str = "eager"):
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                              attn_implementation=attn)
    return model.eval()


def hf_forward(model, ids):
    import torch
    ids_t = torch.from_numpy(ids)[None]

    def run():
        with torch.inference_mode():
            return model(ids_t, output_hidden_states=True, use_cache=False)
    return run


def torch_lens(model, hidden_states, target: int, top_k: int = 5):
    """The plain torch lens: lm_head(ln_f(stack(hidden_states))), all at once, with the same
    statistics.

    hidden_states: the L + 1 residual streams [1, n_seq, d_model] (the last one *before* ln_f).
    """
    import torch
    ln_f = (model.get_decoder().norm if hasattr(model.get_decoder(), "norm")
            else model.get_decoder().ln_f)
    lm_head = model.get_output_embeddings()

    def run():
        with torch.inference_mode():
            stack = torch.stack([h[0] for h in hidden_states])           # [rows, n_seq, d_model]
            logits = lm_head(ln_f(stack))                                  # [rows, n_seq, d_vocab]
            top = torch.topk(logits, top_k, dim=-1)
            logp = torch.log_softmax(logits, dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
            kl = (logp[-1].exp() * (logp[-1] - logp)).sum(-1)               # KL(p_final || p_row)
            t_logit = logits[..., target]
            rank = (logits > t_logit[..., None]).sum(-1)
            return top, entropy, kl, t_logit, logp[..., target].exp(), rank
    return run


def hf_hidden_states_pre_norm(model, ids):
    """output_hidden_states gives resid_pre for every layer but the final norm's output last:
    replace the last with the real final residual (captured by a hook on the final norm's input)."""
    import torch
    captured = {}
    decoder = model.get_decoder()
    ln_f = decoder.norm if hasattr(decoder, "norm") else decoder.ln_f
    handle = ln_f.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    with torch.inference_mode():
        out = model(torch.from_numpy(ids)[None], output_hidden_states=True, use_cache=False)
    handle.remove()
    return list(out.hidden_states[:-1]) + [captured["x"]]


def tl_bridge(folder: Path):
    from transformer_lens.model_bridge import TransformerBridge
    return TransformerBridge.boot_transformers(str(folder), device="cpu")


def tl_lens(bridge, ids, top_k: int = 5):
    """TransformerLens 4.3: transformer_lens.tools.analysis.logit_lens over a cache of every
    position.

    One selector per call, so top-k (with its always-computed entropy and nothing else): it does
    less than minilens's lens, which also reports KL and the target's logit, probability and rank.
    """
    import torch
    from transformer_lens.tools.analysis import logit_lens
    from transformer_lens.tools.analysis.logit_lens import _residual_hook_names
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(
            torch.from_numpy(ids)[None],
            names_filter=_residual_hook_names(int(bridge.cfg.n_layers), False))

    def run():
        return logit_lens(cache, positions=None, top_k=top_k)
    return run


def ml_lens(trace, target: int, top_k: int = 5):
    import minilens as ml

    def run():
        return ml.logit_lens(trace, target=target, top_k=top_k)
    return run


# ------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------

def section_forward(args, rows: list):
    import minilens as ml
    for label, folder in (("GPT-2-small", checkpoints.gpt2_small()),
                          ("Llama-small", checkpoints.llama_small())):
        model = ml.load(folder)
        # No list(model.layers) here: the warm-up round widens every layer, in the order a user's
        # first run does.
        eager, sdpa = load_hf(folder, "eager"), load_hf(folder, "sdpa")
        for n_seq in args.seq:
            ids = np.random.default_rng(n_seq).integers(0, model.cfg.d_vocab, n_seq)
            contenders = {
                # F821 is a false alarm: the lambdas run in harness.interleaved, before the `del`
                "minilens run (full trace)": lambda: model.run(ids),  # noqa: F821
                "minilens model(ids) (logits only)": lambda: model(ids),  # noqa: F821
                "transformers eager": hf_forward(eager, ids),
                "transformers sdpa": hf_forward(sdpa, ids),
                "GEMM floor (numpy)": forward_gemm_floor(model.cfg, n_seq),
            }
            times = harness.interleaved(contenders, args.repeats, clock=args.clock)
            med = {k: harness.median(v) for k, v in times.items()}
            best_hf = min(med["transformers eager"], med["transformers sdpa"])
            for name, t in med.items():
                rows.append({"section": "forward", "model": label, "n_seq": n_seq, "what": name,
                             "median_s": t, "vs_best_transformers": t / best_hf,
                             "vs_gemm_floor": t / med["GEMM floor (numpy)"],
                             "samples": [round(x, 4) for x in times[name]]})
                print(f"forward {label:12s} n_seq={n_seq:5d} {name:28s} {t:8.3f} s   "
                      f"x{t / best_hf:5.2f} of transformers   "
                      f"x{t / med['GEMM floor (numpy)']:5.2f} of floor", flush=True)
        del model, eager, sdpa


def section_textbook(args, rows: list) -> bool:
    """textbook.py's section: forward.py against fast/forward.py; False if their logits disagree."""
    return textbook.section_textbook(args, rows)


def section_lens_time(args, rows: list):
    import minilens as ml
    folder = checkpoints.gpt2_small()
    model = ml.load(folder)
    hf = load_hf(folder, "sdpa")
    bridge = tl_bridge(folder)
    target = 262
    for n_seq in args.lens_seq:
        ids = np.random.default_rng(n_seq).integers(0, model.cfg.d_vocab, n_seq)
        trace = model.run(ids)
        hidden = hf_hidden_states_pre_norm(hf, ids)
        n_rows = model.cfg.n_layers + 1
        contenders = {
            "minilens logit_lens": ml_lens(trace, target),
            "TransformerLens logit_lens": tl_lens(bridge, ids),
            "torch lm_head(ln_f(stack))": torch_lens(hf, hidden, target),
            "unembedding GEMM floor": lens_gemm_floor(model.cfg, n_rows, n_seq),
        }
        times = harness.interleaved(contenders, args.repeats, clock=args.clock)
        med = {k: harness.median(v) for k, v in times.items()}
        for name, t in med.items():
            rows.append({"section": "lens-time", "model": "GPT-2-small", "n_seq": n_seq,
                         "what": name,
                         "median_s": t, "vs_gemm_floor": t / med["unembedding GEMM floor"],
                         "vs_minilens": t / med["minilens logit_lens"],
                         "samples": [round(x, 4) for x in times[name]]})
            print(f"lens    n_seq={n_seq:5d} {name:30s} {t:8.3f} s   "
                  f"x{t / med['unembedding GEMM floor']:5.2f} of floor",
                  flush=True)
        del trace, hidden


def worker(kind: str, n_seq: int, out_json: str, out_npy: str | None):
    """One measurement in a fresh process (so peak RSS belongs to it alone); writes a JSON
    result."""
    harness.pin_threads(int(os.environ.get("BENCH_THREADS", "2")))
    result: dict = {"kind": kind, "n_seq": n_seq}
    if kind.startswith("lens-"):
        import minilens as ml
        folder = checkpoints.gpt2_small()
        ids = np.random.default_rng(n_seq).integers(0, 50257, n_seq)
        target = 262
        if kind == "lens-minilens":
            model = ml.load(folder)
            trace = model.run(ids)
            fn = ml_lens(trace, target)
        elif kind == "lens-transformerlens":
            fn = tl_lens(tl_bridge(folder), ids)
        elif kind == "lens-torch":
            hf = load_hf(folder, "sdpa")
            fn = torch_lens(hf, hf_hidden_states_pre_norm(hf, ids), target)
        else:
            raise SystemExit(f"unknown worker {kind}")
        # The first call pays for imports and first-call allocations; some contenders keep that
        # memory mapped, so the second call can show no extra peak at all. Both are reported.
        _, first = harness.peak_rss_during(fn)
        _, mem = harness.peak_rss_during(fn)
        result.update(mem, extra_rss_first_call=first["extra_rss"],
                      first_call_seconds=first["seconds"])
    elif kind in ("bigload-minilens", "bigload-transformers"):
        folder = checkpoints.tinyllama_bf16()
        ids = np.random.default_rng(1).integers(0, 32000, n_seq)
        result["rss_start"] = harness.rss()
        t0 = time.perf_counter()
        if kind == "bigload-minilens":
            import minilens as ml
            model = ml.load(folder)
            result["load_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            logits = model.run(ids).logits
        else:
            import torch
            model = load_hf(folder, "sdpa")
            result["load_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.inference_mode():
                logits = model(torch.from_numpy(ids)[None], use_cache=False).logits[0].numpy()
        result["forward_s"] = time.perf_counter() - t0
        result["rss_peak"] = harness._status("VmHWM")
        np.save(out_npy, logits)
    else:
        raise SystemExit(f"unknown worker {kind}")
    Path(out_json).write_text(json.dumps(result))


def run_worker(kind: str, n_seq: int, threads: int, keep_npy: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_json, out_npy = f"{tmp}/r.json", keep_npy or f"{tmp}/logits.npy"
        env = dict(os.environ, BENCH_THREADS=str(threads))
        subprocess.run([sys.executable, __file__, "--worker", kind, "--worker-seq", str(n_seq),
                        "--worker-json", out_json, "--worker-npy", out_npy], check=True, env=env)
        return json.loads(Path(out_json).read_text())


def section_lens_memory(args, rows: list):
    for n_seq in args.lens_mem_seq:
        for kind in ("lens-minilens", "lens-transformerlens", "lens-torch"):
            r = run_worker(kind, n_seq, args.threads)
            rows.append({"section": "lens-memory", "model": "GPT-2-small", "n_seq": n_seq,
                         "what": kind, **r})
            print(f"lens memory n_seq={n_seq:5d} {kind:22s} "
                  f"extra peak RSS {r['extra_rss'] / MB:8.1f} MB  "
                  f"tracemalloc peak {r['tracemalloc_peak'] / MB:8.1f} MB  "
                  f"({r['seconds']:.2f} s); first call "
                  f"{r['extra_rss_first_call'] / MB:8.1f} MB ({r['first_call_seconds']:.2f} s)",
                  flush=True)


def section_bigload(args, rows: list):
    checkpoints.tinyllama_bf16()
    folder = checkpoints.tinyllama_bf16()
    n_bytes = (folder / "model.safetensors").stat().st_size
    n_params = n_bytes // 2
    with tempfile.TemporaryDirectory() as tmp:
        results = {"bigload-minilens": [], "bigload-transformers": []}
        for r in range(args.big_repeats):
            for kind in results:
                results[kind].append(run_worker(kind, 128, args.threads,
                                                keep_npy=f"{tmp}/{kind}.npy"))
        ours, ref = (np.load(f"{tmp}/bigload-minilens.npy"),
                     np.load(f"{tmp}/bigload-transformers.npy"))
    err = float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))))
    for kind, rs in results.items():
        load_s = harness.median([x["load_s"] for x in rs])
        fwd_s = harness.median([x["forward_s"] for x in rs])
        peak = max(x["rss_peak"] for x in rs)
        rows.append({"section": "bigload", "model": "TinyLlama-1.1B bf16", "n_seq": 128,
                     "what": kind, "load_s": load_s, "forward_s": fwd_s, "rss_peak": peak,
                     "f32_weights": 4 * n_params, "bf16_weights": 2 * n_params,
                     "peak_vs_f32_weights": peak / (4 * n_params),
                     "max_rel_logit_err": err, "samples": rs})
        print(f"bigload {kind:22s} load {load_s:6.2f} s  forward(128) {fwd_s:6.2f} s  "
              f"peak RSS {peak / MB:8.0f} MB "
              f"= {peak / (4 * n_params):.2f} x f32 weights ({4 * n_params / MB:.0f} MB)",
              flush=True)
    print(f"bigload logits: max |ours - transformers| / max(1, |logit|) = {err:.2e} "
          f"(tolerance 1e-4)", flush=True)


def markdown(rows: list) -> str:
    """The run's results as markdown tables (what tests/benchmarks/README.md shows)."""
    out = []
    fwd = [r for r in rows if r["section"] == "forward"]
    if fwd:
        out += ["| model | n_seq | contender | median s | x best transformers | x GEMM floor |",
                "|---|---:|---|---:|---:|---:|"]
        out += [f"| {r['model']} | {r['n_seq']} | {r['what']} | {r['median_s']:.3f} | "
                f"{r['vs_best_transformers']:.2f} | "
                f"{r['vs_gemm_floor']:.2f} |" for r in fwd]
        out.append("")
    lt = [r for r in rows if r["section"] == "lens-time"]
    if lt:
        out += [("| lens, GPT-2-small, 13 rows | n_seq | median s | x unembedding GEMM floor "
                 "| x minilens |"), "|---|---:|---:|---:|---:|"]
        out += [f"| {r['what']} | {r['n_seq']} | {r['median_s']:.3f} | {r['vs_gemm_floor']:.2f} "
                f"| {r['vs_minilens']:.2f} |" for r in lt]
        out.append("")
    lm = [r for r in rows if r["section"] == "lens-memory"]
    if lm:
        out += [("| lens memory (fresh process) | n_seq | extra peak RSS MB "
                 "| tracemalloc peak MB | s | first call: extra peak RSS MB | s |"),
                "|---|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {r['what']} | {r['n_seq']} | {r['extra_rss'] / MB:.0f} | "
                f"{r['tracemalloc_peak'] / MB:.0f} | "
                f"{r['seconds']:.2f} | {r['extra_rss_first_call'] / MB:.0f} | "
                f"{r['first_call_seconds']:.2f} |" for r in lm]
        out.append("")
    bl = [r for r in rows if r["section"] == "bigload"]
    if bl:
        out += [("| TinyLlama-1.1B bf16 (fresh process) | load s | forward(128) s | peak RSS MB "
                 "| peak / f32 weights |"),
                "|---|---:|---:|---:|---:|"]
        out += [f"| {r['what']} | {r['load_s']:.2f} | {r['forward_s']:.2f} | "
                f"{r['rss_peak'] / MB:.0f} | "
                f"{r['peak_vs_f32_weights']:.2f} |" for r in bl]
        out.append(f"\nlogits, minilens vs transformers: max |diff| / max(1, |logit|) = "
                   f"{bl[0]['max_rel_logit_err']:.1e}")
    out.append(textbook.markdown(rows))
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append",
                   choices=["forward", "lens", "lens-time", "lens-memory", "bigload", "textbook"])
    p.add_argument("--seq", default="128,512,1024", help="forward lengths, comma-separated")
    p.add_argument("--lens-seq", default="512", help="lens timing lengths")
    p.add_argument("--textbook-seq", default="64,256,1024", help="textbook vs fast lengths")
    p.add_argument("--lens-mem-seq", default="512,1024", help="lens memory lengths")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--big-repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall clock (default), "
                        "or this process's CPU time (robust to other jobs at --threads 1)")
    p.add_argument("--json", help="also write every row (with raw samples) to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-seq", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-json", help=argparse.SUPPRESS)
    p.add_argument("--worker-npy", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.worker_seq, args.worker_json, args.worker_npy)
    args.seq = [int(s) for s in args.seq.split(",")]
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    args.lens_seq = [int(s) for s in args.lens_seq.split(",")]
    args.lens_mem_seq = [int(s) for s in args.lens_mem_seq.split(",")]
    args.textbook_seq = [int(s) for s in args.textbook_seq.split(",")]
    only = set(args.only or ["forward", "lens", "bigload"])
    if "lens" in only:
        only |= {"lens-time", "lens-memory"}

    info = {**harness.machine(), **harness.pin_threads(args.threads)}
    print("command: python " + " ".join(sys.argv))
    for k, v in info.items():
        print(f"  {k}: {v}")
    rows: list = []
    if "forward" in only:
        section_forward(args, rows)
    if "lens-time" in only:
        section_lens_time(args, rows)
    if "lens-memory" in only:
        section_lens_memory(args, rows)
    if "bigload" in only:
        section_bigload(args, rows)
    agree = section_textbook(args, rows) if "textbook" in only else True
    info["load_avg_at_end"] = textbook.load_avg()
    print(f"  load_avg_at_end: {info['load_avg_at_end']}")
    print("\n" + markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "command": sys.argv, "rows": rows},
                                              indent=1))
    if not agree:
        sys.exit(f"FAIL: textbook and fast logits differ by more than "
                 f"{textbook.TOLERANCE} * max(1, |logit|)")


if __name__ == "__main__":
    main()
