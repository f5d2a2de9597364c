"""minilens's tuned lens against the tuned-lens package (0.2.0) on SmolLM2 (issue 16, peers).

Both fit on the same training tokens and are judged on the same held-out tokens: the windows
that minilens's ``token_windows`` cuts from ``lens_corpus("train")`` (``--tokens``, 26,000 as in
tests/benchmarks/tuned_lens.py) and from ``lens_corpus("heldout")`` (``--heldout``, 4,096). The
token ids are fed to both, so the tokenizers cannot make the data differ (the script also checks
that transformers' tokenizer gives the same ids). Prints, per layer, KL(final || lens) in nats
averaged over every held-out token as ``evaluate_lens`` does, for minilens's logit, affine and
tuned lens and for the package's logit lens and tuned lens; the mean KL over layers 0..L-1; the
wall-clock and CPU time of each fit; the load average. Writes ``--out``/results.json.

tuned-lens is trained by its own training loop, ``tuned_lens.scripts.train_loop.Train.execute``
(KL to the final layer's distribution at the same position, translators x + W x + b started at
zero, SGD with Nesterov momentum 0.9 at lr 1.0 x (1 - 0.9), weight decay 1e-3, linear decay to 0,
gradient norm clipped to 1, bfloat16 autocast), with its defaults except the amount of data: its
250 steps of 2^18 tokens are 65M tokens, here there are 26k. Two of its pieces are replaced:
``Model.load`` answers with the model loaded here (so that loading is not timed, and because on
transformers 5 its ``from_pretrained(..., load_in_8bit=False)`` raises "LlamaForCausalLM.__init__()
got an unexpected keyword argument 'load_in_8bit'"), and ``Data.load`` answers with minilens's
windows instead of its own ``chunk_and_tokenize`` (which joins all texts with EOS into 2048-token
chunks). A step is ``--windows-per-step`` windows (its per-GPU batch of 1, accumulated); the
windows are repeated as often as ``--tl-steps`` steps need (by default one pass: each training
token once), shuffled by its data loader.

Setup (a separate venv, so the project's environment is untouched; --no-deps keeps torch 2.13.0;
these are the only packages the training loop imports that the system site-packages lack):

    python -m venv --system-site-packages /tmp/tlensvenv
    /tmp/tlensvenv/bin/pip install --no-deps tuned-lens==0.2.0 torchdata==0.8.0 \\
        simple_parsing==0.1.9 docstring_parser==0.18.0

Run (the transformers folder is SmolLM2's GGUF read by transformers and saved, see smollm2.py):

    /tmp/tlensvenv/bin/python tests/benchmarks/tuned_lens_peer.py --threads 1
    # or each side on its own (say, at the same time), then the table from both:
    /tmp/tlensvenv/bin/python tests/benchmarks/tuned_lens_peer.py --only tuned-lens --out tl
    /tmp/tlensvenv/bin/python tests/benchmarks/tuned_lens_peer.py --only minilens --out ml
    /tmp/tlensvenv/bin/python tests/benchmarks/tuned_lens_peer.py --combine tl/results.json \
        ml/results.json --out both
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers

# Python puts this script's folder first on sys.path, and there minilens's own benchmark
# tuned_lens.py would shadow the tuned-lens package: import the package without that folder.
sys.path.remove(str(Path(__file__).resolve().parent))
from tuned_lens.nn import LogitLens, TunedLens
from tuned_lens.scripts import ingredients
from tuned_lens.scripts.train_loop import Train

import minilens as ml
from minilens.analysis.tuned_lens import (
    SEQ_LEN,
    evaluate_lens,
    fit_affine_lens,
    lens_corpus,
    load_translators,
    refine_lens,
    token_windows,
)
from tuned_lens import model_surgery

sys.path.append(str(Path(__file__).resolve().parent))      # harness
import harness

# tuned-lens 0.2.0 checks isinstance(model, transformer_lens.HookedTransformer) whenever
# transformer_lens imports; TransformerLens 4 (installed for benchmarks/patching.py) removed that
# class and raises on the attribute. The model here is a transformers one: skip the check.
model_surgery._transformer_lens_available = False

HF_FOLDER = Path.home() / ".cache/minilens-bench/SmolLM2-135M-Instruct.Q4_1-hf-by-transformers"


def check_tokenizer(model, tokenizer, texts, n_tokens: int) -> str:
    """Whether transformers' tokenizer gives minilens's ids for the texts the windows use."""
    compared = same = used = 0
    for text in texts:
        ours = model.to_tokens(text).tolist()
        theirs = tokenizer(text)["input_ids"]
        compared += 1
        same += ours == theirs
        used += len(ours)
        if used >= n_tokens:
            break
    return f"{same}/{compared} texts tokenized identically by minilens and transformers"


def package_train(hf_model, tokenizer, windows, steps: int, windows_per_step: int,
                  out: Path) -> TunedLens:
    """tuned-lens's own Train.execute on ``windows``; only the loading of model and data is
    ours (module docstring). -> the lens it saved, read back"""
    n_needed = steps * windows_per_step
    repeats = math.ceil(n_needed / len(windows))
    data = datasets.Dataset.from_dict({"input_ids": [w.tolist() for w in windows] * repeats})
    data = data.with_format("torch", columns=["input_ids"])
    model_cfg = ingredients.Model(name=str(HF_FOLDER), precision="float32")
    model_cfg.load = lambda device, must_use_cache=False: (hf_model, tokenizer)
    data_cfg = ingredients.Data(name=["minilens lens_corpus('train') windows"])
    # nats_to_bpb only scales its Weights & Biases logs, which are off (wandb=None).
    data_cfg.load = lambda tok: (data, 1.0)
    # Its step is tokens_per_step // len(data[0]) samples: ask for windows_per_step windows.
    train = Train(model=model_cfg, data=data_cfg, opt=ingredients.Optimizer(),
                  dist=ingredients.Distributed(), output=out, num_steps=steps,
                  tokens_per_step=len(windows[0]) * windows_per_step)
    train.execute()
    return TunedLens.from_model_and_pretrained(hf_model, str(out))


@torch.no_grad()
def package_kl(hf_model, lenses: dict, windows, n_layers: int) -> dict:
    """KL(final || lens) per layer for each of tuned-lens's ``lenses``, averaged over every token
    of every window as evaluate_lens does, in float32; lens(h, idx=l) reads hidden_states[l],
    the input of block l (resid_pre).  -> {name: [n_layers + 1]} (the last, final_post, is 0)"""
    kl, n_tok = {name: np.zeros(n_layers + 1) for name in lenses}, 0
    for i, ids in enumerate(windows):
        out = hf_model(torch.from_numpy(ids)[None], output_hidden_states=True)
        log_p = out.logits[0].float().log_softmax(-1)                  # [n_seq, d_vocab]
        p = log_p.exp()
        for name, lens in lenses.items():
            for l in range(n_layers):
                log_q = lens(out.hidden_states[l][0], idx=l).log_softmax(-1)
                kl[name][l] += float((p * (log_p - log_q)).sum(dtype=torch.float64))
        n_tok += len(ids)
        print(f"tuned-lens evaluation: window {i + 1}/{len(windows)}", file=sys.stderr)
    return {name: v / n_tok for name, v in kl.items()}


def minilens_from(folder: Path, args, model, tuned) -> dict:
    """minilens's per-layer KL from tests/benchmarks/tuned_lens.py's --out ``folder``, run with
    the same arguments, after checking that its tuned lens is the one fitted here."""
    done = json.loads((folder / "results.json").read_text())
    for key in ("tokens", "heldout", "steps", "batch", "lr"):
        if done["args"][key] != getattr(args, key):
            sys.exit(f"{folder}/results.json has {key}={done['args'][key]}, here "
                     f"{getattr(args, key)}: run both with the same arguments.")
    theirs = load_translators(folder / "tuned.safetensors", model)
    diff = max(float(np.abs(theirs.A - tuned.A).max()), float(np.abs(theirs.b - tuned.b).max()))
    kl = {k: np.array(done["evaluations"][k]["kl"]) for k in ("logit", "affine", "tuned")}
    return dict(kl=kl, translator_diff=diff, seconds=done["seconds"])


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def tuned_lens_side(args, results, hf_model, tokenizer, train_windows, held_windows, tl_steps,
                    L) -> None:
    """tuned-lens's fit (timed) and its evaluation with its logit lens, into ``results``."""
    results["loadavg"]["before tuned-lens fit"] = loadavg()
    wall, cpu = clocks()
    package_lens = package_train(hf_model, tokenizer, train_windows, tl_steps,
                                 args.windows_per_step, args.out / "tuned-lens")
    results["seconds"]["tuned-lens wall"] = time.perf_counter() - wall
    results["seconds"]["tuned-lens cpu"] = time.process_time() - cpu
    results["loadavg"]["after tuned-lens fit"] = loadavg()
    theirs = package_kl(hf_model, {"logit": LogitLens.from_model(hf_model),
                                   "tuned": package_lens.eval()}, held_windows, L)
    results["kl"].update({f"tuned-lens {k}": v.tolist() for k, v in theirs.items()})
    results["loadavg"]["after tuned-lens evaluation"] = loadavg()


def minilens_side(args, results, model, train, train_desc, held) -> None:
    """minilens's fit (timed) and its evaluation, or tuned_lens.py's (--minilens-results)
    once its tuned lens is checked to be the one fitted here, into ``results``."""
    results["loadavg"]["before minilens fit"] = loadavg()
    wall, cpu = clocks()
    affine = fit_affine_lens(model, train, max_tokens=args.tokens, data=train_desc)
    results["seconds"]["minilens affine wall"] = time.perf_counter() - wall
    results["seconds"]["minilens affine cpu"] = time.process_time() - cpu
    tuned = refine_lens(model, affine, train, steps=args.steps, batch=args.batch, lr=args.lr)
    results["seconds"]["minilens wall"] = time.perf_counter() - wall
    results["seconds"]["minilens cpu"] = time.process_time() - cpu
    results["loadavg"]["after minilens fit"] = loadavg()
    if args.minilens_results is not None and (args.minilens_results / "results.json").is_file():
        done = minilens_from(args.minilens_results, args, model, tuned)
        ours = done["kl"]
        results["minilens_results"] = dict(translator_max_abs_diff=done["translator_diff"],
                                           seconds=done["seconds"])
    else:
        ours = {name: evaluate_lens(model, lens, held, max_tokens=args.heldout).kl
                for name, lens in (("logit", None), ("affine", affine), ("tuned", tuned))}
        results["loadavg"]["after minilens evaluation"] = loadavg()
    results["kl"].update({f"minilens {k}": v.tolist() for k, v in ours.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=26_000, help="training tokens")
    ap.add_argument("--heldout", type=int, default=4096, help="held-out tokens")
    ap.add_argument("--steps", type=int, default=40, help="minilens refinement steps")
    ap.add_argument("--batch", type=int, default=128, help="minilens refinement batch (tokens)")
    ap.add_argument("--lr", type=float, default=1e-3, help="minilens refinement Adam lr")
    ap.add_argument("--tl-steps", type=int, default=None,
                    help="tuned-lens steps (default: one pass over the training windows)")
    ap.add_argument("--windows-per-step", type=int, default=1, help="tuned-lens windows a step")
    ap.add_argument("--threads", type=int, default=1, help="numpy's BLAS and torch threads")
    ap.add_argument("--minilens-results", type=Path, default=None,
                    help="tuned_lens.py's --out folder: its KL, if there, instead of evaluating")
    ap.add_argument("--only", choices=["tuned-lens", "minilens"], default=None,
                    help="run one side's fit and evaluation only (no side-by-side table)")
    ap.add_argument("--out", type=Path, default=Path("tuned_lens_peer_results"))
    ap.add_argument("--combine", type=Path, nargs=2, default=None, metavar="RESULTS_JSON",
                    help="only print the table from an --only tuned-lens and an --only minilens "
                         "run's results.json")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    threads = harness.pin_threads(args.threads)
    command = "python tests/benchmarks/tuned_lens_peer.py " + " ".join(sys.argv[1:])

    model = ml.load("smollm2")
    L = model.cfg.n_layers
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(HF_FOLDER, dtype=torch.float32)
    hf_model.eval()
    hf_model.requires_grad_(False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(HF_FOLDER)
    train, train_desc = lens_corpus("train")
    held, held_desc = lens_corpus("heldout")
    train_windows = token_windows(model, train, SEQ_LEN, args.tokens)
    held_windows = token_windows(model, held, SEQ_LEN, args.heldout)
    tl_steps = args.tl_steps or len(train_windows) // args.windows_per_step
    tokens_check = (f"train: {check_tokenizer(model, tokenizer, train, args.tokens)}; held out: "
                    f"{check_tokenizer(model, tokenizer, held, args.heldout)}")
    print(tokens_check, file=sys.stderr)
    results = dict(command=command, train=train_desc, heldout=held_desc, args=vars(args) | dict(
        out=str(args.out), minilens_results=str(args.minilens_results), tl_steps=tl_steps),
        train_tokens=sum(map(len, train_windows)), train_windows=len(train_windows),
        heldout_tokens=sum(map(len, held_windows)), tokenizer_check=tokens_check,
        threads=threads, loadavg={}, seconds={}, kl={},
        machine=dict(python=platform.python_version(), numpy=np.__version__,
                     torch=torch.__version__, transformers=transformers.__version__))

    def save():
        (args.out / "results.json").write_text(json.dumps(results, indent=1))

    if args.only != "minilens":
        tuned_lens_side(args, results, hf_model, tokenizer, train_windows, held_windows,
                        tl_steps, L)
        save()
    if args.only != "tuned-lens":
        minilens_side(args, results, model, train, train_desc, held)
        save()
    if args.only is None:
        print(f"$ {command}")
        table(results, L)
    save()
    return 0


def table(results: dict, L: int) -> None:
    """The side-by-side table, the means, the ratio and the times, from results.json's dict
    (which gets the means and the ratio)."""
    kl = {k: np.array(v) for k, v in results["kl"].items()}
    mean = {k: float(v[:L].mean()) for k, v in kl.items()}
    logit_diff = float(np.abs(kl["minilens logit"] - kl["tuned-lens logit"])[:L].max())
    ratio = mean["minilens tuned"] / mean["tuned-lens tuned"]
    results.update(mean_kl=mean, logit_max_abs_diff=logit_diff, ratio_tuned=ratio)
    names = ("minilens logit", "tuned-lens logit", "minilens affine", "minilens tuned",
             "tuned-lens tuned")
    print(f"{'layer':>6} " + " ".join(f"{n:>16}" for n in names))
    for l in range(L):
        print(f"{l:>6} " + " ".join(f"{kl[n][l]:>16.4f}" for n in names))
    print(f"{'mean':>6} " + " ".join(f"{mean[n]:>16.4f}" for n in names))
    print(json.dumps({k: v for k, v in results.items() if k not in ("kl", "args")}, indent=1))
    sec = results["seconds"]
    print(f"minilens tuned / tuned-lens tuned mean KL = {ratio:.3f} (goal <= 1.10: "
          f"{'met' if ratio <= 1.10 else 'MISSED'}); fit wall time minilens "
          f"{sec['minilens wall']:.0f} s, tuned-lens {sec['tuned-lens wall']:.0f} s; CPU time "
          f"{sec['minilens cpu']:.0f} s, {sec['tuned-lens cpu']:.0f} s")


def combine(paths: list[Path], out: Path) -> None:
    """The table from the results.json of an --only tuned-lens and an --only minilens run."""
    parts = [json.loads(p.read_text()) for p in paths]
    results = dict(commands=[p["command"] for p in parts],
                   **{k: v for k, v in parts[0].items() if k != "command"})
    for key in ("kl", "seconds", "loadavg"):
        results[key] = {k: v for p in parts for k, v in p[key].items()}
    results["minilens_results"] = next((p["minilens_results"] for p in parts
                                        if "minilens_results" in p), None)
    print("\n".join(f"$ {c}" for c in results["commands"]))
    table(results, len(results["kl"]["minilens tuned"]) - 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}/results.json")


if __name__ == "__main__":
    sys.exit(main())
