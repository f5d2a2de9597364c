"""SmolLM2-135M-Instruct (Q4_1 GGUF): minilens against transformers and the GEMM floors (issue 13).

Run by hand, never in the test suite:

    python tests/benchmarks/smollm2.py --threads 2        # about 10 minutes on 2 quiet cores
    python tests/benchmarks/smollm2.py --threads 1 --only forward --seq 512

The model is the one ``minilens fetch smollm2`` downloads (``--model`` takes another name or a
.gguf path). Inputs are token ids, ``np.random.default_rng(0).integers(0, 49152, n)``, not text.

Sections
  forward  ``model.run(ids)`` (the full trace) and ``model(ids)`` against transformers loading
           the same GGUF file in float32 (``from_pretrained(folder, gguf_file=...)``), eager and
           sdpa attention, each with ``output_hidden_states=True`` and without, and against the
           forward GEMM floor (run.forward_gemm_floor). Target: the full trace at 512 tokens
           <= 1.0x the fastest transformers contender. The logits must agree with transformers'
           to 1e-4 of each position's scale (max(1, its largest |logit|)), at every length.
  lens     ``ml.logit_lens(trace, target, top_k=5)`` on 31 rows x 512 positions against its GEMM
           floor (run.lens_gemm_floor: the unembedding of 31 x 512 rows). Target: <= 1.3x.
  fresh    ``--fresh`` fresh processes, each: ``import minilens``, ``ml.load(path)``, the first
           ``model(ids)`` at 128 tokens, then the second and third. Target: load + first <= 2x
           the second. Timers wrapped around minilens's own functions split the time into
           parsing the GGUF header (GGUFFile), building the tokenizer, widening the tensors
           (GGUFCheckpoint.widen: dequantizing a block's tensors in the workers, un-permuting Q/K,
           casting), the layers' widening in all (LazyLayers.widen_seconds), and the rest.
           One more fresh process loads the file with transformers, for comparison.

Every ratio in a table is measured in one run, contenders alternating round by round in a
rotating order after a warm-up round (harness.interleaved), numpy's BLAS and torch pinned to
--threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")   # transformers' GGUF loader draws a progress bar
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import harness  # noqa: E402
import run  # noqa: E402  (forward_gemm_floor, lens_gemm_floor, hf_forward, ml_lens, markdown)

LABEL = "SmolLM2-135M Q4_1"
LENS_TARGET = 504   # any token id: the lens reports its logit, probability and rank


def model_path(name: str) -> Path:
    """The .gguf file of a fetched model name (or a path): what ml.load(name) reads."""
    from minilens.loading.checkpoint import resolve
    from minilens.loading.gguf_checkpoint import find_gguf
    return find_gguf(resolve(name))


def token_ids(n_seq: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 49152, n_seq)


def load_hf_gguf(path: Path, attn: str):
    """transformers' own GGUF loader: dequantizes every tensor to float32 at load."""
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation=attn)
    return model.eval()


def hf_logits(model, ids):
    """transformers' forward without output_hidden_states (run.hf_forward keeps them)."""
    import torch
    ids_t = torch.from_numpy(ids)[None]

    def call():
        with torch.inference_mode():
            return model(ids_t, use_cache=False)
    return call


def max_rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max(1, |ref|), |ref| being each position's largest logit: the criterion
    of tests/test_real_model.py (per position, because float32 rounds every logit of a position on
    that position's scale; element by element, two float32 runs of the same model differ by more
    than 1e-4 on these random-token inputs)."""
    scale = np.maximum(1.0, np.abs(ref).max(axis=-1, keepdims=True))
    return float(np.max(np.abs(ours.astype(np.float64) - ref) / scale))


# ------------------------------------------------------------------------------------------
# In-process sections
# ------------------------------------------------------------------------------------------

def section_accuracy(args, path: Path, model, hf: dict, checks: list):
    """The logits against transformers' (tolerance 1e-4 of each position's scale), and, to show
    how large float32's own noise is on this model, everything against minilens in float64."""
    import minilens as ml
    ref64 = ml.load(path, dtype=np.float64)
    for n_seq in args.seq:
        ids = token_ids(n_seq)
        got = {"minilens": model(ids), "float64": ref64(ids)}
        got.update({attn: hf_logits(m, ids)().logits[0].numpy() for attn, m in hf.items()})
        errs = {f"minilens vs transformers {attn}": max_rel_err(got["minilens"], got[attn])
                for attn in hf}
        ok = all(e <= 1e-4 for e in errs.values())
        label = {"eager": "transformers eager", "sdpa": "transformers sdpa",
                 "minilens": "minilens", "float64": "minilens float64"}
        errs.update({f"{label[a]} vs {label[b]}": max_rel_err(got[a], got[b]) for a, b in
                     [("eager", "sdpa"), ("minilens", "float64"), ("eager", "float64"),
                      ("sdpa", "float64")] if a in got and b in got})
        same_top1 = min(float(np.mean(got["minilens"].argmax(-1) == got[a].argmax(-1)))
                        for a in hf)
        checks.append({"n_seq": n_seq, "ok": ok, "errs": errs, "same_top1": same_top1})
        for what, e in errs.items():
            print(f"logits n_seq={n_seq:5d} {what:40s} max |diff| / position scale = {e:.1e}"
                  + (f" ({'ok' if e <= 1e-4 else 'FAILS 1e-4'})" if "transformers" in what else ""),
                  flush=True)
    del ref64


def section_forward(args, model, hf: dict, rows: list):
    for n_seq in args.seq:
        ids = token_ids(n_seq)
        contenders = {"minilens run (full trace)": lambda ids=ids: model.run(ids),
                      "minilens model(ids) (logits only)": lambda ids=ids: model(ids)}
        for attn, m in hf.items():
            contenders[f"transformers {attn}, hidden states"] = run.hf_forward(m, ids)
            contenders[f"transformers {attn}, logits only"] = hf_logits(m, ids)
        contenders["GEMM floor (numpy)"] = run.forward_gemm_floor(model.cfg, n_seq)
        times = harness.interleaved(contenders, args.repeats, clock=args.clock)
        med = {k: harness.median(v) for k, v in times.items()}
        best_hf = min(t for k, t in med.items() if k.startswith("transformers"))
        for name, t in med.items():
            rows.append({"section": "forward", "model": LABEL, "n_seq": n_seq, "what": name,
                         "median_s": t, "vs_best_transformers": t / best_hf,
                         "vs_gemm_floor": t / med["GEMM floor (numpy)"],
                         "samples": [round(x, 4) for x in times[name]]})
            print(f"forward n_seq={n_seq:5d} {name:36s} {t:8.3f} s  x{t / best_hf:5.2f} of best "
                  f"transformers  x{t / med['GEMM floor (numpy)']:5.2f} of floor", flush=True)


def section_lens(args, model, rows: list):
    for n_seq in args.lens_seq:
        trace = model.run(token_ids(n_seq))
        n_rows = model.cfg.n_layers + 1
        contenders = {"minilens logit_lens": run.ml_lens(trace, LENS_TARGET),
                      "unembedding GEMM floor": run.lens_gemm_floor(model.cfg, n_rows, n_seq)}
        times = harness.interleaved(contenders, args.repeats, clock=args.clock)
        med = {k: harness.median(v) for k, v in times.items()}
        for name, t in med.items():
            rows.append({"section": "lens", "n_rows": n_rows, "n_seq": n_seq, "what": name,
                         "median_s": t, "vs_gemm_floor": t / med["unembedding GEMM floor"],
                         "samples": [round(x, 4) for x in times[name]]})
            print(f"lens {n_rows} rows x {n_seq} positions {name:24s} {t:8.3f} s  "
                  f"x{t / med['unembedding GEMM floor']:5.2f} of floor", flush=True)
        del trace


# ------------------------------------------------------------------------------------------
# Fresh processes: load + first forward against the second
# ------------------------------------------------------------------------------------------

def timed(owner, attr: str, spent: dict, label: str) -> None:
    """Replace owner.attr by a wrapper that adds its seconds to spent[label]."""
    fn = getattr(owner, attr)

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
    setattr(owner, attr, wrapper)


def worker_minilens(path: Path, n_seq: int) -> dict:
    """One fresh process, as a user's: import, load, three forwards; every phase timed."""
    t0 = time.perf_counter()
    import minilens as ml
    from minilens import model as M
    from minilens.loading import gguf_checkpoint, gguf_file
    out = {"import_s": time.perf_counter() - t0}
    spent: dict = {}
    timed(gguf_file.GGUFFile, "__init__", spent, "parse")        # mmap + header + metadata
    timed(M, "gguf_tokenizer", spent, "tokenizer")
    # a block's (or a global's) tensors dequantized by the workers, un-permuted and cast: wall
    # clock, in this thread
    timed(gguf_checkpoint.GGUFCheckpoint, "widen", spent, "widen")
    ids = token_ids(n_seq)
    for phase in ("load", "first", "second", "third"):
        spent.clear()
        t0 = time.perf_counter()
        if phase == "load":
            model = ml.load(path)
        else:
            logits = model(ids)
        out[f"{phase}_s"] = time.perf_counter() - t0
        out[f"{phase}_parts"] = dict(spent)
        if phase == "first":       # the layers' widening in all: widen + W_gate | W_in, layouts
            out["first_parts"]["layers"] = model.layers.widen_seconds
    out["logits_head"] = logits[:, :64].tolist()
    return out


def worker_transformers(path: Path, n_seq: int, threads: int) -> dict:
    t0 = time.perf_counter()
    import torch
    import transformers  # noqa: F401  (imported here to time it apart from the load)
    out = {"import_s": time.perf_counter() - t0}
    torch.set_num_threads(threads)
    ids = torch.from_numpy(token_ids(n_seq))[None]
    t0 = time.perf_counter()
    model = load_hf_gguf(path, "sdpa")
    out["load_s"] = time.perf_counter() - t0
    for phase in ("first", "second", "third"):
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = model(ids, use_cache=False).logits[0]
        out[f"{phase}_s"] = time.perf_counter() - t0
    out["logits_head"] = logits[:, :64].numpy().tolist()
    return out


def worker(kind: str, path: str, n_seq: int, threads: int, out_json: str) -> None:
    # threadpoolctl directly, not harness.pin_threads: that imports torch, which a minilens user's
    # process would not have loaded.
    import threadpoolctl
    threadpoolctl.threadpool_limits(threads)
    if kind == "transformers":
        result = worker_transformers(Path(path), n_seq, threads)
    else:
        result = worker_minilens(Path(path), n_seq)
    Path(out_json).write_text(json.dumps(result))


def fresh(kind: str, path: Path, n_seq: int, threads: int) -> dict:
    out_json = f"/tmp/smollm2-bench-{os.getpid()}.json"
    subprocess.run([sys.executable, __file__, "--worker", kind, "--model", str(path),
                    "--worker-seq", str(n_seq), "--threads", str(threads),
                    "--worker-json", out_json],
                   check=True)
    result = json.loads(Path(out_json).read_text())
    os.unlink(out_json)
    return result


def section_fresh(args, path: Path, rows: list):
    runs = {"minilens": [], "transformers": []}
    for r in range(max(args.fresh, args.hf_fresh)):
        for kind, n in (("minilens", args.fresh), ("transformers", args.hf_fresh)):
            if r < n:
                runs[kind].append(fresh(kind, path, args.fresh_seq, args.threads))
                x = runs[kind][-1]
                print(f"fresh {kind:12s} import {x['import_s']:.2f} s  load {x['load_s']:.3f} s  "
                      f"first {x['first_s']:.3f} s  second {x['second_s']:.3f} s  "
                      f"third {x['third_s']:.3f} s", flush=True)
    if runs["minilens"] and runs["transformers"]:
        ours = np.array(runs["minilens"][0]["logits_head"])
        ref = np.array(runs["transformers"][0]["logits_head"])
        print(f"fresh logits (first 64 vocab columns): max rel err {max_rel_err(ours, ref):.1e}")
    for kind, rs in runs.items():
        if not rs:
            continue
        med = {k: harness.median([x[k] for x in rs])
               for k in ("import_s", "load_s", "first_s", "second_s", "third_s")}
        row = {"section": "fresh", "what": kind, "n_seq": args.fresh_seq, "n": len(rs), **med,
               "ratio": (med["load_s"] + med["first_s"]) / med["second_s"], "samples": rs}
        for phase in ("load", "first") if kind == "minilens" else ():
            keys = sorted({k for x in rs for k in x.get(f"{phase}_parts", {})})
            parts = [x[f"{phase}_parts"] for x in rs]
            row[f"{phase}_parts"] = {k: harness.median([x.get(k, 0.0) for x in parts])
                                     for k in keys}
        rows.append(row)
        print(f"fresh {kind}: (load + first) / second = {row['ratio']:.2f}", flush=True)


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------

def table(header: list, body: list) -> list:
    """Markdown lines: a header row, then one row per list of cells; numbers right-aligned."""
    def line(cells):
        return "| " + " | ".join(str(c) for c in cells) + " |"
    return [line(header), "|---|" + "---:|" * (len(header) - 1), *map(line, body), ""]


def markdown(rows: list, checks: list) -> str:
    out = [run.markdown([r for r in rows if r["section"] == "forward"]).rstrip() + "\n"]
    if checks:
        out += table(["logits: max abs diff / max(1, position's max abs ref)"]
                     + [c["n_seq"] for c in checks],
                     [[n] + [f"{c['errs'][n]:.1e}" for c in checks] for n in checks[0]["errs"]]
                     + [["positions where minilens's argmax is transformers'"]
                        + [f"{c['same_top1']:.1%}" for c in checks]])
    lens = [r for r in rows if r["section"] == "lens"]
    if lens:
        out += table(["lens, 31 rows, vocab 49152", "positions", "median s",
                      "x unembedding GEMM floor"],
                     [[r["what"], r["n_seq"], f"{r['median_s']:.3f}", f"{r['vs_gemm_floor']:.2f}"]
                      for r in lens])
    fr = [r for r in rows if r["section"] == "fresh"]
    if fr:
        out += table([f"fresh process, {fr[0]['n_seq']} tokens (median of n)", "n", "import s",
                      "load s", "first s", "second s", "third s", "(load + first) / second"],
                     [[r["what"], r["n"], f"{r['import_s']:.2f}"]
                      + [f"{r[k]:.3f}" for k in ("load_s", "first_s", "second_s", "third_s")]
                      + [f"{r['ratio']:.2f}"] for r in fr])
    for r in (r for r in fr if r["what"] == "minilens"):
        lp, fp = r["load_parts"], r["first_parts"]
        parts = [
            ("load: parse the header and metadata (GGUFFile)", lp.get("parse", 0)),
            ("load: build the tokenizer (it is built on first use)", lp.get("tokenizer", 0)),
            ("load: dequantize the globals (GGUFCheckpoint.widen)", lp.get("widen", 0)),
            ("load: the rest (config, validation, finite check)",
             r["load_s"] - lp.get("parse", 0) - lp.get("tokenizer", 0) - lp.get("widen", 0)),
            ("first: widen the 30 layers (LazyLayers.widen_all)", fp.get("layers", 0)),
            ("first: of which dequantize, un-permute Q/K, cast (GGUFCheckpoint.widen)",
             fp.get("widen", 0)),
            ("first: the forward itself", r["first_s"] - fp.get("layers", 0)),
            ("second: the forward", r["second_s"])]
        out += table(["minilens, where the time goes (medians)", "s"],
                     [[what, f"{t:.3f}"] for what, t in parts])
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["forward", "lens", "fresh"], action="append")
    p.add_argument("--model", default="smollm2", help="a fetched model name or a .gguf path")
    p.add_argument("--seq", default="128,512,1024", help="forward lengths, comma-separated")
    p.add_argument("--lens-seq", default="512", help="lens lengths")
    p.add_argument("--fresh-seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fresh", type=int, default=5, help="fresh minilens processes")
    p.add_argument("--hf-fresh", type=int, default=1, help="fresh transformers processes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--json", help="also write every row (with raw samples) to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-seq", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.worker_seq, args.threads, args.worker_json)
    args.seq = [int(s) for s in args.seq.split(",")]
    args.lens_seq = [int(s) for s in args.lens_seq.split(",")]
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    only = set(args.only or ["forward", "lens", "fresh"])
    path = model_path(args.model)

    info = {**harness.machine(), **harness.pin_threads(args.threads), "model": str(path)}
    print("command: python " + " ".join(sys.argv))
    for k, v in info.items():
        print(f"  {k}: {v}")
    rows: list = []
    checks: list = []
    if "fresh" in only:       # first, while this process holds no models
        section_fresh(args, path, rows)
    if only & {"forward", "lens"}:
        import minilens as ml
        model = ml.load(path)
        if "forward" in only:
            hf = {attn: load_hf_gguf(path, attn) for attn in ("eager", "sdpa")}
            section_accuracy(args, path, model, hf, checks)
            section_forward(args, model, hf, rows)
            del hf
        if "lens" in only:
            section_lens(args, model, rows)
    info["load_avg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"  load_avg_at_end: {info['load_avg_at_end']}")
    print("\n" + markdown(rows, checks))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "command": sys.argv, "rows": rows,
                                               "checks": checks}, indent=1))
    if any(not c["ok"] for c in checks):
        raise SystemExit("minilens's logits differ from transformers' by more than 1e-4 of a "
                         "position's scale (see the logits table)")


if __name__ == "__main__":
    main()
