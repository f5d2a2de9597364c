"""The grader for the course assignment:
``python -m minilens.check tutorials/assignment_logit_lens.py``.

It imports the student's file, runs each function on several inputs, and compares the result with
minilens's own numbers:
- the shipped Shakespeare Llama (RMSNorm, no biases) on two prompts, when the weights are present,
  and
- a small random GPT-2 (LayerNorm with beta, biases everywhere) written to a temporary folder,
  so that every term of both norms is exercised.

A failed part says what to look at: the checker also computes the usual mistakes (eps outside the
sqrt, a missing gamma, no centring, log base 2, KL the wrong way round, a divisor that is not
frozen, ...) and names the one the answer matches. Student code can raise anything, or not be
finished; an exception becomes a failed part (NotImplementedError: TODO), never a crash of the
checker. Exit status: 0 only when every part passes; 1 otherwise; 2 when the file cannot be found.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import ops
from ..analysis.attribution import layer_attribution as ml_layer_attribution
from ..analysis.lens import lens_logits, logit_lens
from ..model import load


@dataclass
class Case:
    """One input to grade on: a model, a trace of one prompt, and the final-norm parameters."""
    name: str
    model: object
    trace: object
    gamma: np.ndarray
    beta: np.ndarray | None
    eps: float
    kind: str
    W_U: np.ndarray
    b_U: np.ndarray | None


class Unfinished(Exception):
    pass


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------

def random_gpt2(folder: Path, seed: int = 0):
    """A tiny random GPT-2 (LayerNorm with beta, every bias, an untied unembedding), written with
    numpy alone."""
    from safetensors.numpy import save_file
    d, n_layers, d_vocab, n_ctx = 48, 2, 97, 32
    rng = np.random.default_rng(seed)
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": n_layers,
          "n_embd": d, "n_head": 4, "vocab_size": d_vocab, "n_positions": n_ctx,
          "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
          "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}

    def m(*shape, scale=None):
        return (rng.standard_normal(shape)
                * (scale if scale is not None else shape[0] ** -0.5)).astype(np.float32)

    t = {"transformer.wte.weight": m(d_vocab, d, scale=0.5),
         "transformer.wpe.weight": m(n_ctx, d, scale=0.5),
         "transformer.ln_f.weight": 1 + m(d, scale=0.2), "transformer.ln_f.bias": m(d, scale=0.2),
         "lm_head.weight": m(d_vocab, d)}
    for l in range(n_layers):
        p = f"transformer.h.{l}."
        t.update({p + "ln_1.weight": 1 + m(d, scale=0.2), p + "ln_1.bias": m(d, scale=0.2),
                  p + "attn.c_attn.weight": m(d, 3 * d),
                  p + "attn.c_attn.bias": m(3 * d, scale=0.2),
                  p + "attn.c_proj.weight": m(d, d), p + "attn.c_proj.bias": m(d, scale=0.2),
                  p + "ln_2.weight": 1 + m(d, scale=0.2), p + "ln_2.bias": m(d, scale=0.2),
                  p + "mlp.c_fc.weight": m(d, 4 * d), p + "mlp.c_fc.bias": m(4 * d, scale=0.2),
                  p + "mlp.c_proj.weight": m(4 * d, d), p + "mlp.c_proj.bias": m(d, scale=0.2)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf))
    save_file(t, str(folder / "model.safetensors"))
    return load(folder)


def make_case(name: str, model, ids) -> Case:
    g, cfg = model.params, model.cfg
    return Case(name, model, model.run(ids), g.lnf_w, g.lnf_b, cfg.norm_eps, cfg.norm, g.W_U, g.b_U)


def build_cases(tmp: Path) -> list[Case]:
    cases = []
    try:
        shipped = load("shakespeare-llama")
        for text in ("To be, or not to be, that is the", "My lord, the king"):
            cases.append(make_case(f"shakespeare-llama on {text!r}", shipped, text))
    except Exception:
        pass  # no shipped weights (a bare checkout): the random models still grade every part
    gpt2 = random_gpt2(tmp / "gpt2")
    cases.append(make_case("random GPT-2 (LayerNorm, biases)", gpt2,
                           np.random.default_rng(1).integers(0, 97, 11)))
    return cases


# ------------------------------------------------------------------------------------------
# Comparing, and naming the mistake
# ------------------------------------------------------------------------------------------

def close(got, want, rtol=1e-3, atol_frac=1e-3) -> bool:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.isfinite(got).all():
        return False
    return bool(np.allclose(got, want, rtol=rtol,
                            atol=atol_frac * max(1e-6, float(np.abs(want).max()))))


def judge(fn_name: str, got, want, mistakes: dict[str, np.ndarray], what: str) -> str | None:
    """None if right, else a message that teaches."""
    try:
        arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return f"{fn_name} returned {type(got).__name__}, not an array of numbers ({what})."
    if arr.shape != np.shape(want):
        return (f"{fn_name} returned shape {list(arr.shape)}, "
                f"expected {list(np.shape(want))} ({what}).")
    if not np.isfinite(arr).all():
        return (f"{fn_name} returned NaN or inf ({what}). "
                f"Subtract the row max before exp, and check for log(0).")
    if close(arr, want):
        return None
    for hint, wrong in mistakes.items():
        if np.shape(wrong) == arr.shape and close(arr, wrong, rtol=1e-4, atol_frac=1e-4):
            return f"{hint} ({what})"
    err = float(np.abs(arr - np.asarray(want, dtype=np.float64)).max())
    return (f"{fn_name} is off by up to {err:.3g} ({what}); "
            f"compare your formula with the docstring line by line.")


def call(module, name: str, *args):
    fn = getattr(module, name, None)
    if fn is None:
        raise Unfinished(f"the file defines no function {name}()")
    return fn(*args)


# ------------------------------------------------------------------------------------------
# The parts
# ------------------------------------------------------------------------------------------

def norm_mistakes(x, gamma, beta, eps, kind) -> dict[str, np.ndarray]:
    x = x.astype(np.float64)
    xc = x - x.mean(-1, keepdims=True) if kind == "layernorm" else x
    ms = (xc * xc).mean(-1, keepdims=True)
    b = 0.0 if beta is None else beta
    right = xc / np.sqrt(ms + eps)
    return {
        "Is eps inside the sqrt? It is sqrt(mean + eps), not sqrt(mean) + eps.":
            xc / (np.sqrt(ms) + eps) * gamma + b,
        "Did you multiply by the norm's gamma (its weight)?": right + b,
        "Did you add beta (LayerNorm's bias)?": right * gamma,
        "LayerNorm subtracts the mean over d_model first. Did you centre x?":
            x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma + b,
        "RMSNorm does not centre x: it divides by the root of mean(x**2), "
        "not by the standard deviation.":
            (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + b,
        "Normalise each position over d_model: the mean is over the last axis, not over positions.":
            (x - (x.mean(0, keepdims=True) if kind == "layernorm" else 0)) /
            np.sqrt(((x - (x.mean(0, keepdims=True) if kind == "layernorm" else 0)) ** 2)
                    .mean(0, keepdims=True) + eps)
            * gamma + b,
        "It is the mean of x**2 over d_model, not the sum.":
            xc / np.sqrt((xc * xc).sum(-1, keepdims=True) + eps) * gamma + b,
        "Divide by the root: sqrt(mean(x**2) + eps), not mean(x**2) + eps.":
            xc / (ms + eps) * gamma + b,
    }



def normalize(x, gamma, beta, kind: str, eps: float):
    """The reference final norm, from ops.py's equations."""
    if kind == "layernorm":
        return ops.layer_norm(x, gamma, 0.0 if beta is None else beta, eps)[0]
    return ops.rms_norm(x, gamma, eps)[0]

def part_norm(module, cases: list[Case]) -> str | None:
    rng = np.random.default_rng(7)
    inputs = []
    for c in cases:
        inputs.append((c.trace["resid_final"], c.gamma, c.beta, c.eps, c.kind,
                       f"{c.name}, the final residual"))
    # tiny inputs with a large eps: here eps inside or outside the sqrt makes a visible difference
    d = 16
    for kind in ("rmsnorm", "layernorm"):
        x = rng.standard_normal((5, d)).astype(np.float32) * 0.05
        inputs.append((x, 1 + 0.3 * rng.standard_normal(d),
                       0.2 * rng.standard_normal(d) if kind == "layernorm" else None,
                       0.01, kind, f"random x ~ 0.05, eps=0.01, {kind}"))
    for x, gamma, beta, eps, kind, what in inputs:
        want = normalize(x.astype(np.float64), gamma, beta, kind, eps)
        msg = judge("final_norm", call(module, "final_norm", x.copy(), gamma, beta, eps, kind),
                    want, norm_mistakes(x, gamma, beta, eps, kind), what)
        if msg:
            return msg
    return None


def part_lens_row(module, cases: list[Case]) -> str | None:
    for c in cases:
        for l in sorted({0, c.trace.n_layers // 2, c.trace.n_layers - 1}):
            resid = c.trace["resid_pre", l]
            want = lens_logits(c.model, resid)
            b_U = 0.0 if c.b_U is None else c.b_U
            normed = normalize(resid.astype(np.float64), c.gamma, c.beta, c.kind, c.eps)
            final_scale = c.trace["scale_final"]
            xc = resid - resid.mean(-1, keepdims=True) if c.kind == "layernorm" else resid
            mistakes = {
                "The lens reads the stream through the final norm first: N(x) W_U + b_U, "
                "not x W_U.": resid @ c.W_U + b_U,
                "Did you add the unembedding bias b_U?": normed @ c.W_U,
                "Return logits, not probabilities: the softmax comes later (Part 3).":
                    np.exp(want - want.max(-1, keepdims=True))
                    / np.exp(want - want.max(-1, keepdims=True)).sum(-1, keepdims=True),
                "Recompute the norm on this layer's stream: the final layer's divisor gives early "
                "layers the wrong temperature (TransformerLens issue #1076).":
                    (xc / final_scale * c.gamma + (0 if c.beta is None else c.beta)) @ c.W_U + b_U,
            }
            args = (resid.copy(), c.gamma, c.beta, c.eps, c.kind, c.W_U, c.b_U)
            msg = judge("lens_row", call(module, "lens_row", *args), want, mistakes,
                        f"{c.name}, resid_pre {l}")
            if msg:
                return msg
    return None


def _log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def part_entropy_kl(module, cases: list[Case]) -> str | None:
    for c in cases:
        lens = logit_lens(c.trace)
        final = lens_logits(c.model, c.trace["resid_final"])
        for r in sorted({0, len(lens.labels) // 2, len(lens.labels) - 1}):
            logits = lens.logits(r)
            log_p, log_f = _log_softmax(logits), _log_softmax(final)
            p, pf = np.exp(log_p), np.exp(log_f)
            what = f"{c.name}, lens row {lens.labels[r]}"
            msg = judge("entropy", call(module, "entropy", logits.copy()), lens.entropy[r], {
                "Entropy is in nats: use the natural log (np.log), not log2.":
                    -(p * log_p).sum(-1) / np.log(2),
                "Entropy is -sum p log p: mind the minus sign.": (p * log_p).sum(-1),
                "Take the softmax first: the entropy is of the probabilities, "
                "not of the raw logits.":
                    -(logits * np.log(np.abs(logits) + 1e-30)).sum(-1),
            }, what)
            if msg:
                return msg
            msg = judge("kl_to_final", call(module, "kl_to_final", final.copy(), logits.copy()),
                        lens.kl_to_final[r], {
                "KL the wrong way round: it is KL(p_final || p) = "
                "sum p_final (log p_final - log p), an expectation under the final distribution.":
                    (p * (log_p - log_f)).sum(-1),
                "KL is in nats: use the natural log, not log2.":
                    (pf * (log_f - log_p)).sum(-1) / np.log(2),
                "KL(p_final || p) is sum p_final (log p_final - log p): mind the sign.":
                    (pf * (log_p - log_f)).sum(-1),
            }, what)
            if msg:
                return msg
    return None


def components(trace, q: int) -> np.ndarray:
    """What each part wrote at position q, in minilens's by="layer" order.  -> [n_parts, d_model]"""
    rows = [trace["embed"][q]] + ([trace["pos_embed"][q]] if "pos_embed" in trace else [])
    for l in range(trace.n_layers):
        rows += [trace["attn_out", l][q], trace["mlp_out", l][q]]
    return np.stack(rows)


def part_attribution(module, cases: list[Case]) -> str | None:
    for c in cases:
        for q in (-1, c.trace.n_seq // 2):
            target = int(np.argsort(c.trace.logits[q])[-2])  # the runner-up: an interesting target
            attr = ml_layer_attribution(c.trace, target, position=q, by="layer")
            want = attr.values[:-1]                          # the last entry is the constant
            comps = components(c.trace, q).astype(np.float64)
            x_final = c.trace["resid_final"][q].astype(np.float64)
            u = c.W_U[:, target].astype(np.float64)
            cc = comps - comps.mean(-1, keepdims=True) if c.kind == "layernorm" else comps
            xf = x_final - x_final.mean() if c.kind == "layernorm" else x_final
            s = np.sqrt((xf * xf).mean() + c.eps)
            per_part_s = np.sqrt((cc * cc).mean(-1, keepdims=True) + c.eps)
            const = 0.0 if c.beta is None else float(c.beta @ u)
            mistakes = {
                "Freeze the divisor at its value on x_final: the norm of one component alone is "
                "not what the model computed, and the parts would not sum to the logit.":
                    ((cc / per_part_s) * c.gamma) @ u,
                "Did you multiply by the final norm's gamma?": (cc / s) @ u,
                "LayerNorm centres: subtract each component's mean over d_model (centring the "
                "readout direction is the same thing).": (comps / s * c.gamma) @ u,
                "The constant (beta . W_U[:, t] + b_U[t]) belongs to no component: "
                "leave it out of the parts.":
                    (cc / s * c.gamma) @ u + const,
                "Divide by the frozen divisor s = sqrt(mean(x_final**2) + eps), don't multiply.":
                    (cc * s * c.gamma) @ u,
            }
            args = (comps.copy(), x_final.copy(), c.gamma, c.beta, c.eps, c.kind, c.W_U, c.b_U,
                    target)
            got = call(module, "layer_attribution", *args)
            msg = judge("layer_attribution", got, want, mistakes,
                        f"{c.name}, position {q}, target id {target}")
            if msg:
                return msg
            total = float(np.sum(got)) + float(attr.values[-1])
            if abs(total - attr.logit) > 1e-3 * max(1.0, abs(attr.logit)):
                return (f"the parts plus the constant sum to {total:.5f}, "
                        f"but the logit is {attr.logit:.5f}.")
    return None


PARTS = [
    ("Part 1", "final_norm", part_norm),
    ("Part 2", "lens_row", part_lens_row),
    ("Part 3", "entropy, kl_to_final", part_entropy_kl),
    ("Part 4", "layer_attribution", part_attribution),
]


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------

def import_student(path: Path):
    spec = importlib.util.spec_from_file_location("student_assignment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_error(e: BaseException) -> str:
    """The exception and the line of the student's file it came from."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "minilens" not in Path(f.filename).parts[-2:-1]]
    where = f" (line {frames[-1].lineno}: {frames[-1].line})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def grade(path: str | Path, out=None) -> dict[str, str]:
    """Grade one file; prints a line per part and returns {part: "PASS" | "FAIL" | "TODO"}."""
    out = out or sys.stdout
    path = Path(path)
    print(f"minilens.check: grading {path}", file=out)
    results: dict[str, str] = {}
    try:
        module = import_student(path)
    except BaseException as e:  # a syntax error, an import that fails, even sys.exit at import time
        if isinstance(e, KeyboardInterrupt):
            raise
        for label, name, _ in PARTS:
            results[label] = "FAIL"
            print(f"  [FAIL] {label}  {name}: the file does not import: {short_error(e)}", file=out)
        print(f"0 of {len(PARTS)} parts pass.", file=out)
        return results
    with tempfile.TemporaryDirectory(prefix="minilens-check-") as tmp:
        cases = build_cases(Path(tmp))
        for label, name, part in PARTS:
            try:
                with np.errstate(all="ignore"):
                    message = part(module, cases)
                status = "PASS" if message is None else "FAIL"
                detail = (f"matches minilens on {len(cases)} models/prompts" if message is None
                          else message)
            except (NotImplementedError, Unfinished) as e:
                status, detail = "TODO", f"not done yet ({e})"
            except BaseException as e:
                if isinstance(e, KeyboardInterrupt):
                    raise
                status, detail = "FAIL", f"your code raised {short_error(e)}"
            results[label] = status
            print(f"  [{status}] {label}  {name}: {detail}", file=out)
    n = sum(s == "PASS" for s in results.values())
    print(f"{n} of {len(PARTS)} parts pass." + (" Well done." if n == len(PARTS) else ""), file=out)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m minilens.check PATH/TO/assignment_logit_lens.py", file=sys.stderr)
        return 2 if not argv or argv[0] not in ("-h", "--help") else 0
    path = Path(argv[0])
    if not path.is_file():
        print(f"minilens.check: error: {path} is not a file. Give the path of your assignment, "
              f"e.g. tutorials/assignment_logit_lens.py", file=sys.stderr)
        return 2
    results = grade(path)
    return 0 if all(s == "PASS" for s in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
