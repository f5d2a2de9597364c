"""The grader of the first assignment, tutorials/assignment_logit_lens.py: the final norm, a lens
row, entropy and KL, and layer attribution, written by the student in numpy.

Each function runs on several inputs and is compared with minilens's own numbers:
- the shipped Shakespeare Llama (RMSNorm, no biases) on two prompts, when the weights are present;
- a small random GPT-2 (LayerNorm with beta, biases everywhere) written to a temporary folder, so
  that every term of both norms is exercised;
- the same GPT-2 given an unembedding bias b_U. No family minilens loads has one (GPT-2's lm_head
  has no bias), but the lens formula N(x) W_U + b_U has the term, and a lens_row that drops it
  must fail somewhere;
- logits shifted by +1000 for entropy and KL: the softmax does not change, but exp(1000)
  overflows unless the row max is subtracted first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import ops
from ..analysis.attribution import layer_attribution as ml_layer_attribution
from ..analysis.lens import lens_logits, logit_lens
from ..model import load
from .grading import call, judge

NAME = "logit_lens"
TEMPLATE = "tutorials/assignment_logit_lens.py"
FUNCTIONS = ("final_norm", "lens_row", "entropy", "kl_to_final", "layer_attribution")
SHIFT = 1000.0  # added to every logit for the overflow inputs: exp(1000) is inf even in float64
SOFTMAX_NAN = ("Subtract the row max before exp: softmax(z) = softmax(z - max z), and exp of a "
               "large logit overflows. Then check for log(0).")


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


def build_cases(tmp: Path, models: list[str] | None = None) -> list[Case]:
    """The shipped Llama (or ``models``) on two prompts, then the random GPT-2s."""
    cases = []
    for name in models or ["shakespeare-llama"]:
        try:
            model = load(name)
        except Exception:
            continue  # no shipped weights (a bare checkout): the random models grade every part
        for text in ("To be, or not to be, that is the", "My lord, the king"):
            cases.append(make_case(f"{name}, {text!r}", model, text))
    ids = np.random.default_rng(1).integers(0, 97, 11)
    gpt2 = random_gpt2(tmp / "gpt2")
    cases.append(make_case("random GPT-2 (LayerNorm, biases)", gpt2, ids))
    biased = load(tmp / "gpt2")
    biased.params.b_U = (np.random.default_rng(2).standard_normal(biased.cfg.d_vocab)
                         .astype(np.float32))
    cases.append(make_case("random GPT-2 with an unembedding bias b_U", biased, ids))
    return cases


def describe(cases: list[Case]) -> str:
    """What the parts are graded on, said once before them."""
    return "; ".join(c.name for c in cases)


# ------------------------------------------------------------------------------------------
# The parts
# ------------------------------------------------------------------------------------------

def norm_mistakes(x, gamma, beta, eps, kind) -> dict[str, np.ndarray]:
    x = x.astype(np.float64)
    xc = x - x.mean(-1, keepdims=True) if kind == "layernorm" else x
    ms = (xc * xc).mean(-1, keepdims=True)
    b = 0.0 if beta is None else beta
    right = xc / np.sqrt(ms + eps)
    d = x.shape[-1]
    over_token = x - (x.mean(0, keepdims=True) if kind == "layernorm" else 0)
    mistakes = {
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
            over_token / np.sqrt((over_token ** 2).mean(0, keepdims=True) + eps) * gamma + b,
        "It is the mean of x**2 over d_model, not the sum.":
            xc / np.sqrt((xc * xc).sum(-1, keepdims=True) + eps) * gamma + b,
        "Divide by the root: sqrt(mean(x**2) + eps), not mean(x**2) + eps.":
            xc / (ms + eps) * gamma + b,
    }
    if kind == "layernorm":
        mistakes["LayerNorm's divisor uses the biased variance: the mean of (x - mean(x))**2, "
                 "divided by d_model, not d_model - 1 (np.var's default ddof=0 is right; "
                 "ddof=1, or torch.var's default, is not)."] = (
            xc / np.sqrt((xc * xc).sum(-1, keepdims=True) / (d - 1) + eps) * gamma + b)
    return mistakes


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
            probs = np.exp(want - want.max(-1, keepdims=True))
            mistakes = {
                "The lens reads the stream through the final norm first: N(x) W_U + b_U, "
                "not x W_U.": resid @ c.W_U + b_U,
                "Did you add the unembedding bias b_U? logits = N(x) W_U + b_U "
                "(when b_U is not None).": normed @ c.W_U,
                "Return logits, not probabilities: the softmax comes later (Part 3).":
                    probs / probs.sum(-1, keepdims=True),
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
            # The same logits, and the same logits shifted by +SHIFT: softmax(z + k) = softmax(z),
            # so minilens's entropy and KL are the answer for both, but exp(z + 1000) overflows.
            # float64, so that the shift itself rounds nothing away.
            overflow = (f", every logit + {SHIFT:g} (the softmax is the same, "
                        f"but exp({SHIFT:g}) overflows)")
            for shift, note in ((0.0, ""), (SHIFT, overflow)):
                z, zf = logits.astype(np.float64) + shift, final.astype(np.float64) + shift
                what = f"{c.name}, lens row {lens.labels[r]}{note}"
                msg = judge("entropy", call(module, "entropy", z.copy()), lens.entropy[r], {
                    "Entropy is in nats: use the natural log (np.log), not log2.":
                        -(p * log_p).sum(-1) / np.log(2),
                    "Entropy is -sum p log p: mind the minus sign.": (p * log_p).sum(-1),
                    "Take the softmax first: the entropy is of the probabilities, "
                    "not of the raw logits.":
                        -(z * np.log(np.abs(z) + 1e-30)).sum(-1),
                }, what, nan_hint=SOFTMAX_NAN)
                if msg:
                    return msg
                msg = judge("kl_to_final", call(module, "kl_to_final", zf.copy(), z.copy()),
                            lens.kl_to_final[r], {
                    "KL the wrong way round: it is KL(p_final || p) = "
                    "sum p_final (log p_final - log p), an expectation under the final "
                    "distribution.":
                        (p * (log_p - log_f)).sum(-1),
                    "KL is in nats: use the natural log, not log2.":
                        (pf * (log_f - log_p)).sum(-1) / np.log(2),
                    "KL(p_final || p) is sum p_final (log p_final - log p): mind the sign.":
                        (pf * (log_p - log_f)).sum(-1),
                }, what, nan_hint=SOFTMAX_NAN)
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
            layernorm = c.kind == "layernorm"
            cc = comps - comps.mean(-1, keepdims=True) if layernorm else comps
            xf = x_final - x_final.mean() if layernorm else x_final
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
            if layernorm:
                uncentred_s = np.sqrt((x_final * x_final).mean() + c.eps)
                mistakes["LayerNorm's divisor is the standard deviation of x_final: "
                         "s = sqrt(mean((x_final - mean(x_final))**2) + eps). "
                         "Centre x_final before you take s, as LayerNorm does "
                         "(sqrt(mean(x_final**2) + eps) is RMSNorm's divisor)."] = (
                    (cc / uncentred_s * c.gamma) @ u)
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
