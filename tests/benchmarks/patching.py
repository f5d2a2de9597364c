"""Activation patching on SmolLM2-135M-Instruct: minilens against a naive loop and TransformerLens.

Run by hand, never in the test suite:

    python tests/benchmarks/patching.py --threads 2 --repeats 3   # about 20 min on 2 quiet cores
    python tests/benchmarks/patching.py --only golden             # the golden cells only

The grid: denoising, ``resid_pre`` x position over all 30 layers, metric the normalized logit
difference logit[" Mary"] - logit[" John"] at the last position (0 = corrupted, 1 = clean), for
the indirect-object pair (14 tokens each)

    clean     "When Mary and John went to the store, John gave a drink to"
    corrupted "When Mary and John went to the store, Mary gave a drink to"

and the same pair after the neutral clause "It was a sunny afternoon. " (20 tokens each).

Contenders, each computing the whole grid from the two prompts' token ids:
  minilens      ``ml.activation_patching(model, clean, corrupted, "logit_diff_normalized", ...)``:
                per layer, restart at block l from the corrupted run's recorded stream and run
                every position's patch as one batch, reading only the last position's logits.
  naive loop    minilens too, one full ``model.run(corrupted, interventions={("resid_pre", l):
                patch})`` per (layer, position), as one would write it by hand.
  TransformerLens 4.3.0, ``transformer_lens.patching.get_act_patch_resid_pre`` on
                ``TransformerBridge.boot_transformers(folder)`` (raw weights, no folding), the
                folder written from the same GGUF by ``minilens.loading.convert.gguf_to_hf``
                (float32, the tensors minilens computes with); torch.no_grad(), including
                the clean ``run_with_cache`` and the corrupted baseline run.
Target: minilens at most 0.6x the naive loop. The three grids must agree: minilens and the naive
loop to 1e-4, TransformerLens to 1e-4 of the grid's scale (float32 on every side).

Every ratio is measured in one run, contenders alternating round by round in a rotating order
(harness.interleaved) after a first round that checks the grids against each other, numpy's BLAS
and torch pinned to --threads.
`golden` prints the cells that tests/test_patching_reference.py asserts: the top 5 resid_pre cells
by |value - corrupted|, the clean logit difference, and the strongest head (key="z", by="head"),
as minilens computes them and (unless --no-tl) as TransformerLens computes them on a folder that
transformers' own GGUF loader wrote: the test's numbers are the reference's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")   # TransformerLens draws a progress bar per grid
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import harness  # noqa: E402

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
PREFIX = "It was a sunny afternoon. "     # 6 tokens: the 20-token pair
TARGET, CONTRAST = " Mary", " John"
CACHE = Path(os.environ.get("MINILENS_BENCH_CACHE", Path.home() / ".cache" / "minilens-bench"))


def hf_folder(name: str) -> Path:
    """The model as a Hugging Face folder (``gguf_to_hf``), written once into the bench cache."""
    from minilens.loading.checkpoint import resolve
    from minilens.loading.convert import gguf_to_hf
    from minilens.loading.gguf_checkpoint import find_gguf

    gguf = find_gguf(resolve(name))
    folder = CACHE / f"{gguf.stem}-hf"
    if not (folder / "config.json").exists():
        partial = CACHE / f"{gguf.stem}-hf.partial"
        if partial.exists():
            for f in partial.iterdir():
                f.unlink()
            partial.rmdir()
        gguf_to_hf(gguf, partial)
        partial.rename(folder)
    return folder


def naive_grid(model, clean_ids, corrupted_ids, t: int, c: int) -> np.ndarray:
    """One full model.run per (layer, position), the patch as an intervention. -> [layer, pos]"""
    def diff(logits: np.ndarray) -> float:
        return float(logits[-1, t]) - float(logits[-1, c])
    clean = model.run(clean_ids, names={"resid_pre"})
    m_clean, m_corrupted = diff(clean.logits), diff(model.run(corrupted_ids, names=()).logits)
    n_layers, n_seq = model.cfg.n_layers, len(clean_ids)
    grid = np.empty((n_layers, n_seq))
    for l in range(n_layers):
        for p in range(n_seq):
            def patch(x: np.ndarray, l=l, p=p) -> np.ndarray:     # x: [n_seq, d_model]
                x = x.copy()
                x[p] = clean["resid_pre", l][p]
                return x
            run = model.run(corrupted_ids, names=(), interventions={("resid_pre", l): patch})
            grid[l, p] = diff(run.logits)
    return (grid - m_corrupted) / (m_clean - m_corrupted)


def tl_grid(bridge, clean_ids, corrupted_ids, t: int, c: int, fn=None) -> np.ndarray:
    """A TransformerLens patching grid (``fn``, default get_act_patch_resid_pre -> [layer, pos]),
    denoising, the logit difference normalized as minilens's (0 = corrupted, 1 = clean)."""
    import torch
    from transformer_lens.patching import get_act_patch_resid_pre

    with torch.no_grad():
        clean = torch.tensor(clean_ids)[None]
        corrupted = torch.tensor(corrupted_ids)[None]
        clean_logits, cache = bridge.run_with_cache(clean)
        corrupted_logits = bridge(corrupted)
        m_clean = clean_logits[0, -1, t] - clean_logits[0, -1, c]
        m_corrupted = corrupted_logits[0, -1, t] - corrupted_logits[0, -1, c]

        def normalized(logits):                                  # logits: [batch, pos, d_vocab]
            ld = logits[0, -1, t] - logits[0, -1, c]
            return (ld - m_corrupted) / (m_clean - m_corrupted)
        return (fn or get_act_patch_resid_pre)(bridge, corrupted, cache, normalized).numpy()


def section_timing(args, model, bridge, rows: list, checks: list) -> None:
    import minilens as ml

    t, c = model.to_single_token(TARGET), model.to_single_token(CONTRAST)
    for prefix in ("", PREFIX):
        clean_ids = model.to_tokens(prefix + CLEAN)
        corrupted_ids = model.to_tokens(prefix + CORRUPTED)
        n_seq = len(clean_ids)
        contenders = {
            "minilens activation_patching": lambda: ml.activation_patching(
                model, clean_ids, corrupted_ids, "logit_diff_normalized", target=t,
                contrast=c).values,
            "naive loop (one model.run per cell)": lambda: naive_grid(
                model, clean_ids, corrupted_ids, t, c),
        }
        if bridge is not None:
            contenders["TransformerLens get_act_patch_resid_pre"] = lambda: tl_grid(
                bridge, clean_ids, corrupted_ids, t, c)
        grids = {}
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            grids[name] = fn()
            print(f"  n_seq {n_seq}: {name}: first grid in {time.perf_counter() - t0:.1f} s wall",
                  flush=True)
        ours = grids["minilens activation_patching"]
        for name, grid in grids.items():
            err = float(np.abs(grid - ours).max()) / max(1.0, float(np.abs(grid).max()))
            checks.append({"n_seq": n_seq, "what": name, "err": err, "ok": err <= 1e-4})
            print(f"  n_seq {n_seq}: {name} differs from minilens's grid by {err:.2e}", flush=True)
        # the grids above, computed once for the agreement check, were the warm-up round
        times = harness.interleaved(contenders, args.repeats, warmup=0, clock=args.clock)
        naive = harness.median(times["naive loop (one model.run per cell)"])
        for name, ts in times.items():
            rows.append({"n_seq": n_seq, "what": name, "median_s": harness.median(ts),
                         "vs_naive": harness.median(ts) / naive, "samples": ts})
            print(f"  n_seq {n_seq}: {name}: median {harness.median(ts):.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in ts)})", flush=True)


def hf_folder_by_transformers(name: str) -> Path:
    """The model as a Hugging Face folder written by transformers' own GGUF loader
    (``from_pretrained(folder, gguf_file=...)`` then ``save_pretrained``): the golden cells'
    reference, independent of minilens's dequantization and conversion. Written once."""
    from minilens.loading.checkpoint import resolve
    from minilens.loading.gguf_checkpoint import find_gguf

    gguf = find_gguf(resolve(name))
    folder = CACHE / f"{gguf.stem}-hf-by-transformers"
    if not (folder / "config.json").exists():
        import torch
        import transformers
        kw = {"gguf_file": gguf.name}
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32,
                                                                  **kw)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kw)
        # save_pretrained refuses a model read from GGUF: copy its float32 weights into a plain one
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def section_golden_reference(model) -> None:
    """The golden cells as TransformerLens 4.3.0 computes them on transformers' own reading of the
    GGUF file: the values tests/test_patching_reference.py asserts."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    bridge = TransformerBridge.boot_transformers(str(hf_folder_by_transformers("smollm2")),
                                                 device="cpu", dtype=torch.float32)
    bridge.eval()
    t, c = model.to_single_token(TARGET), model.to_single_token(CONTRAST)
    clean_ids, corrupted_ids = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    labels = [f"{p}:{s}" for p, s in enumerate(model.token_strings(corrupted_ids))]
    with torch.no_grad():
        lds = [float(lg[0, -1, t] - lg[0, -1, c])
               for lg in (bridge(torch.tensor(ids)[None]) for ids in (clean_ids, corrupted_ids))]
    grid = tl_grid(bridge, clean_ids, corrupted_ids, t, c)             # [layer, pos]
    heads = tl_grid(bridge, clean_ids, corrupted_ids, t, c,
                    get_act_patch_attn_head_out_all_pos)               # [layer, head]
    print(f"\ngolden reference (TransformerLens on transformers' GGUF reading), {CLEAN!r}")
    print(f"  logit diff clean {lds[0]:.6f}, corrupted {lds[1]:.6f}")
    print("  resid_pre top 5 (|value - corrupted|, normalized):")
    for i in np.argsort(-np.abs(grid), axis=None, kind="stable")[:5]:
        l, p = np.unravel_index(i, grid.shape)
        print(f"    ('L{l} {labels[p]}', {grid[l, p]:.6f}),")
    l, h = np.unravel_index(np.argmax(np.abs(heads)), heads.shape)
    print(f"  strongest head: ('L{l} H{h}', {heads[l, h]:.6f})")


def section_golden(model) -> None:
    import minilens as ml

    for prefix in ("", PREFIX):
        clean, corrupted = prefix + CLEAN, prefix + CORRUPTED
        mary, john = model.to_single_token(TARGET), model.to_single_token(CONTRAST)
        lds = [float(model(text)[-1, mary]) - float(model(text)[-1, john])
               for text in (clean, corrupted)]
        grid = ml.activation_patching(model, clean, corrupted, "logit_diff_normalized",
                                      target=TARGET, contrast=CONTRAST)
        heads = ml.activation_patching(model, clean, corrupted, "logit_diff_normalized", key="z",
                                       by="head", target=TARGET, contrast=CONTRAST)
        print(f"\ngolden, {grid.values.shape[1]} tokens: {clean!r}")
        print(f"  logit diff clean {lds[0]:.6f}, corrupted {lds[1]:.6f}")
        print("  resid_pre top 5 (|value - corrupted|, normalized):")
        for label, value in grid.top(5):
            print(f"    ({label!r}, {value:.6f}),")
        print("  heads (z, by head) top 5:")
        for label, value in heads.top(5):
            print(f"    ({label!r}, {value:.6f}),")


def markdown(rows: list) -> str:
    out = ["| n_seq | contender | median s | x naive loop |", "|---:|---|---:|---:|"]
    out += [f"| {r['n_seq']} | {r['what']} | {r['median_s']:.2f} | {r['vs_naive']:.2f} |"
            for r in rows]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["timing", "golden"], action="append")
    p.add_argument("--model", default="smollm2", help="a fetched model name or a .gguf path")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--no-tl", action="store_true", help="leave TransformerLens out")
    args = p.parse_args()
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    only = set(args.only or ["timing", "golden"])

    import minilens as ml
    info = {**harness.machine(), **harness.pin_threads(args.threads)}
    print("command: python " + " ".join(sys.argv))
    print("  utc: " + time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
    print("  uptime: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    for k, v in info.items():
        print(f"  {k}: {v}")
    model = ml.load(args.model)
    rows: list = []
    checks: list = []
    if "timing" in only:
        bridge = None
        if not args.no_tl:
            from transformer_lens.model_bridge import TransformerBridge
            bridge = TransformerBridge.boot_transformers(str(hf_folder(args.model)), device="cpu")
            bridge.eval()
        section_timing(args, model, bridge, rows, checks)
    print("  uptime at end: "
          + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    if rows:
        print("\n" + markdown(rows))
    if "golden" in only:
        section_golden(model)
        if not args.no_tl:
            section_golden_reference(model)
    if any(not c["ok"] for c in checks):
        raise SystemExit("a grid differs from minilens's by more than 1e-4 of its scale (above)")


if __name__ == "__main__":
    main()
