"""Direct logit attribution: split one logit into the parts of the stream that wrote it.

The final residual is a sum of everything written to the stream: x_L = embed (+ pos_embed)
+ sum over layers of (attn_out + mlp_out). Freeze the final norm's divisor s at its value on
x_L; the norm becomes linear, and the target's logit splits exactly (DESIGN.md, "The math"):

- LayerNorm: attr_c = ((c - mean(c)) / s * gamma) . u, plus the constant beta . u + b_U[t]
- RMSNorm:   attr_c = (c / s * gamma) . u,              plus the constant b_U[t]

with u = W_U[:, t] (or W_U[:, t] - W_U[:, t'] for a contrast). Centring each component equals
centring the readout direction w = gamma * u / s, so every part is simply c . w_read.

Where the biases live (decided once, the same for ``by="head"`` and ``by="token"``):
the layer's ``"{l}_attn"`` entry is all of attn_out, biases included. Split into heads or source
tokens, each head's part excludes its value bias b_V, and ``"{l}_attn_bias"`` holds
b_O + sum_h b_V[h] W_O[h]. The value bias is input-independent: pattern rows sum to 1, so b_V
passes through attention unchanged whatever the pattern is. (TransformerLens's ``z`` includes
b_V; its per-head numbers differ from ours by that constant.)

The parts are computed in float64 from the recorded float32/float64 stream, so their sum matches
the model's logit up to the forward pass's own rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import checks
from ..errors import InputError
from ..ops import gqa_repeat
from ..trace import check_trace

if TYPE_CHECKING:
    from ..trace import Trace

BY = ("layer", "head", "neuron", "token")


@dataclass
class Attribution:
    """The parts of one logit (or logit difference). ``values.sum() == logit``, whatever ``by``
    is."""

    labels: np.ndarray              # [n_parts] str
    values: np.ndarray              # [n_parts] float64
    logit: float                    # the model's actual logit (or logit difference) at `position`
    target: int                     # vocabulary id
    contrast: int | None            # vocabulary id subtracted, or None
    position: int                   # non-negative sequence position
    by: str                         # "layer" | "head" | "neuron" | "token"
    layer: int | None = None        # the layer split, for by="neuron"/"token" (and by="head"
                                    # when given)
    target_str: str | None = None
    contrast_str: str | None = None
    # With a final-logit soft-cap (Gemma 2), ``logit`` and the parts live in the pre-cap space,
    # where the split is exact; this is the capped number the model reports, cap * tanh(logit / cap)
    # for a single target (for a contrast: the difference of the two capped logits). None without a
    # cap.
    capped_logit: float | None = None

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k parts of largest magnitude, largest first, as (label, value)."""
        order = np.argsort(-np.abs(self.values), kind="stable")[:checks.count(k, "k")]
        return [(str(self.labels[i]), float(self.values[i])) for i in order]

    def __getitem__(self, label: str) -> float:
        hits = np.flatnonzero(self.labels == label)
        if not len(hits):
            raise InputError(f"no part {label!r}; parts are {', '.join(self.labels[:8])}...")
        return float(self.values[hits[0]])

    def to_dict(self) -> dict:
        return dict(labels=self.labels.tolist(), values=self.values.tolist(), logit=self.logit,
                    target=self.target, target_str=self.target_str, contrast=self.contrast,
                    contrast_str=self.contrast_str, position=self.position, by=self.by,
                    layer=self.layer, capped_logit=self.capped_logit)

    def __repr__(self) -> str:
        what = repr(self.target_str) if self.target_str is not None else f"#{self.target}"
        if self.contrast is not None:
            what += " - " + (repr(self.contrast_str) if self.contrast_str is not None
                             else f"#{self.contrast}")
        capped = ('' if self.capped_logit is None
                  else f' before the soft-cap ({self.capped_logit:.4f} after)')
        head = (f"Attribution(by={self.by!r}"
                f"{'' if self.layer is None else f', layer={self.layer}'}, "
                f"logit[{what}] at position {self.position} = {self.logit:.4f}"
                f"{capped}"
                f", sum of {len(self.values)} parts "
                f"= {self.values.sum():.4f})")
        shown = (self.top(12) if len(self.values) > 16
                 else list(zip(self.labels.tolist(), self.values.tolist())))
        width = max(len(label) for label, _ in shown)
        more = ([f"  ... {len(self.values) - len(shown)} more (largest |value| shown)"]
                if len(shown) < len(self.values) else [])
        return "\n".join([head]
                         + [f"  {label.ljust(width)}  {value:+.4f}" for label, value in shown]
                         + more)


# ------------------------------------------------------------------------------------------
# The math
# ------------------------------------------------------------------------------------------

def readout(trace: "Trace", position: int, target: int,
            contrast: int | None) -> tuple[np.ndarray, float]:
    """The direction w_read that turns a stream component into its logit share, and the constant.

    -> [d_model], float

    attr_c = c . w_read, with w_read = gamma * u / s, centred for LayerNorm (centring c or w is the
    same).
    """
    model = trace.model
    g, cfg = model.params, model.cfg
    u = g.W_U[:, target].astype(np.float64)                          # [d_model]
    b = 0.0 if g.b_U is None else float(g.b_U[target])
    if contrast is not None:
        u = u - g.W_U[:, contrast]
        b -= 0.0 if g.b_U is None else float(g.b_U[contrast])
    s = float(trace["scale_final"][position, 0])                      # frozen at its value on x_L
    w_read = g.lnf_w.astype(np.float64) * u / s
    constant = b
    if cfg.norm == "layernorm":
        w_read -= w_read.mean()
        if g.lnf_b is not None:
            constant += float(g.lnf_b.astype(np.float64) @ u)
    return w_read, constant


def capped_logit(trace: "Trace", position: int, target: int, contrast: int | None) -> float | None:
    """The model's reported (soft-capped) logit (difference), or None when the family has no
    final cap."""
    if not trace.model.cfg.final_softcap:
        return None
    logits = trace.logits[position]
    return float(logits[target]) - (0.0 if contrast is None else float(logits[contrast]))


def model_logit(trace: "Trace", position: int, target: int, contrast: int | None) -> float:
    """The model's actual logit (difference), before any final soft-cap (attribution is exact
    there)."""
    model = trace.model
    if model.cfg.final_softcap:
        logits = trace["logits_precap"][position]
    else:
        logits = trace.logits[position]
    return float(logits[target]) - (0.0 if contrast is None else float(logits[contrast]))


def layer_parts(trace: "Trace", pos: int, w_read: np.ndarray) -> list[tuple[str, float]]:
    """embed, pos_embed, then "{l}_attn" and "{l}_mlp" for every layer: each component . w_read."""
    parts = [("embed", float(trace["embed"][pos] @ w_read))]
    if "pos_embed" in trace:
        parts.append(("pos_embed", float(trace["pos_embed"][pos] @ w_read)))
    for l in range(trace.n_layers):
        parts.append((f"{l}_attn", float(trace["attn_out", l][pos] @ w_read)))
        parts.append((f"{l}_mlp", float(trace["mlp_out", l][pos] @ w_read)))
    return parts


def through_post_norm(trace: "Trace", l: int, position: int, w_read: np.ndarray,
                      sublayer: str) -> np.ndarray:
    """The readout of a sublayer's raw output. With Gemma-2's sandwich norms, what the sublayer
    writes is RMSNorm(raw): freeze that norm's divisor too, and raw's readout is
    gamma_post * w_read / s_post.  -> [d_model]"""
    if not trace.model.cfg.sandwich_norms:
        return w_read
    w = trace.model.layers[l]
    gamma, key = ((w.ln1_post_w, "scale_ln1_post") if sublayer == "attn"
                  else (w.ln2_post_w, "scale_ln2_post"))
    return gamma * w_read / float(trace[key, l][position, 0])


def head_readout(trace: "Trace", l: int, position: int,
                 w_read: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-head OV readout W_O[h] w_read, the value bias per head, and layer l's attn bias share.

    -> [n_heads, d_head], [n_heads, d_head] (zeros when there is no b_V), float
    """
    cfg, w = trace.model.cfg, trace.model.layers[l]
    w_read = through_post_norm(trace, l, position, w_read, "attn")
    W_O_read = w.W_O.reshape(cfg.n_heads, cfg.d_head, cfg.d_model) @ w_read  # [n_heads, d_head]
    group = cfg.n_heads // cfg.n_kv_heads  # GQA: head h reads kv head h // group
    if w.b_V is None:
        b_V = np.zeros((cfg.n_heads, cfg.d_head))
    else:
        b_V = gqa_repeat(w.b_V.reshape(cfg.n_kv_heads, cfg.d_head), group)    # [n_heads, d_head]
    bias = float(np.einsum("hd,hd->", b_V, W_O_read))  # sum_h b_V[h] W_O[h] w_read
    if w.b_O is not None:
        bias += float(w.b_O @ w_read)
    return W_O_read, b_V, bias


def head_parts(trace: "Trace", position: int, l: int, w_read: np.ndarray) -> tuple[list, float]:
    """Head h of layer l: (z_h - b_V[h]) W_O[h] . w_read.

    -> [("L{l}H{h}", value)], the layer's attn bias
    """
    W_O_read, b_V, bias = head_readout(trace, l, position, w_read)
    z = trace["z", l][position] - b_V                                # [n_heads, d_head]
    values = np.einsum("hd,hd->h", z, W_O_read)                      # [n_heads]
    return [(f"L{l}H{h}", float(v)) for h, v in enumerate(values)], bias


def token_parts(trace: "Trace", position: int, l: int,
                w_read: np.ndarray) -> tuple[np.ndarray, float]:
    """Source k through layer l: sum_h pattern[h, pos, k] (v_h[k] - b_V[h]) W_O[h] . w_read.

    -> [pos + 1], bias
    """
    cfg = trace.model.cfg
    W_O_read, b_V, bias = head_readout(trace, l, position, w_read)
    group = cfg.n_heads // cfg.n_kv_heads
    v = gqa_repeat(trace["v", l][:position + 1], group) - b_V        # [k, n_heads, d_head]
    v_read = np.einsum("khd,hd->kh", v, W_O_read)                    # [k, n_heads]
    pattern = trace["pattern", l][:, position, :position + 1]        # [n_heads, k]
    return np.einsum("hk,kh->k", pattern, v_read), bias


def neuron_parts(trace: "Trace", position: int, l: int,
                 w_read: np.ndarray) -> tuple[np.ndarray, float]:
    """Neuron i of layer l: mlp_post[pos, i] * (W_out[i] . w_read).

    -> [d_mlp], the mlp bias share
    """
    w = trace.model.layers[l]
    w_read = through_post_norm(trace, l, position, w_read, "mlp")
    values = trace["mlp_post", l][position] * (w.W_out @ w_read)                  # [d_mlp]
    return values, (0.0 if w.b_out is None else float(w.b_out @ w_read))


# ------------------------------------------------------------------------------------------
# The API
# ------------------------------------------------------------------------------------------

def layer_attribution(trace: "Trace", target, position: int = -1, by: str = "layer", contrast=None,
                      layer: int | None = None) -> Attribution:
    """Direct logit attribution of ``target``'s logit at ``position``.

    by="layer":  "embed", "pos_embed" (learned positions only, kept separate), "{l}_attn", "{l}_mlp"
                 for every layer (biases included), and "bias" (the readout constant).
    by="head":   "L{l}H{h}" for every head (of ``layer`` only, when given), "{l}_attn_bias" per
                 layer, "rest".
    by="neuron": layer=l required; "L{l}N{i}" for every neuron, sorted by |value| largest first,
                 then "{l}_mlp_bias" and "rest".
    by="token":  layer=l required; "{k}:{token}" for every source position k <= position through
                 layer l's attention, then "{l}_attn_bias" and "rest".
    "rest" is everything else in the stream plus the constant, so values.sum() == logit always.
    """
    model = check_trace(trace, "layer_attribution").model
    if not isinstance(by, str) or by not in BY:
        raise InputError(f"by={by!r} is not a way to split the logit; "
                         f"use one of {', '.join(map(repr, BY))}.")
    n_seq = trace.n_seq
    if (isinstance(position, bool) or not isinstance(position, (int, np.integer))
            or not -n_seq <= position < n_seq):
        raise InputError(f"position {position!r} is out of range: the sequence has {n_seq} tokens, "
                         f"so use 0..{n_seq - 1} (or -{n_seq}..-1).")
    pos = int(position) % n_seq
    t = model.to_single_token(target)
    t2 = None if contrast is None else model.to_single_token(contrast)
    if t2 == t:
        raise InputError(f"contrast is the target itself (id {t}), so the difference is 0. "
                         f"Pick another token to compare with, or drop contrast=.")
    if by in ("neuron", "token") and layer is None:
        raise InputError(f"by={by!r} splits one layer: pass layer=l (0..{trace.n_layers - 1}).")
    if by == "layer" and layer is not None:
        raise InputError("by='layer' covers every layer; "
                         "drop layer=, or use by='head'/'neuron'/'token' with it.")
    l = None if layer is None else trace.layer_index(layer)

    w_read, constant = readout(trace, pos, t, t2)
    parts = layer_parts(trace, pos, w_read)
    labels: list[str]
    values: list[float]
    if by == "layer":
        labels = [label for label, _ in parts] + ["bias"]
        values = [v for _, v in parts] + [constant]
    else:
        split = set(range(trace.n_layers)) if l is None else {l}
        if by == "head":
            labels, values, biases = [], [], []
            for layer_l in sorted(split):
                heads, bias = head_parts(trace, pos, layer_l, w_read)
                labels += [label for label, _ in heads]
                values += [v for _, v in heads]
                biases.append((f"{layer_l}_attn_bias", bias))
            labels += [label for label, _ in biases]
            values += [v for _, v in biases]
            covered = {f"{layer_l}_attn" for layer_l in split}
        elif by == "neuron":
            neuron_values, bias = neuron_parts(trace, pos, l, w_read)
            order = np.argsort(-np.abs(neuron_values), kind="stable")
            labels = [f"L{l}N{i}" for i in order] + [f"{l}_mlp_bias"]
            values = neuron_values[order].astype(np.float64).tolist() + [bias]
            covered = {f"{l}_mlp"}
        else:  # token
            token_values, bias = token_parts(trace, pos, l, w_read)
            strs = model.token_strings(trace.ids[:pos + 1])
            labels = [f"{k}:{s}" for k, s in enumerate(strs)] + [f"{l}_attn_bias"]
            values = token_values.astype(np.float64).tolist() + [bias]
            covered = {f"{l}_attn"}
        labels.append("rest")
        values.append(sum(v for label, v in parts if label not in covered) + constant)

    return Attribution(labels=np.array(labels), values=np.array(values, dtype=np.float64),
                       logit=model_logit(trace, pos, t, t2),
                       capped_logit=capped_logit(trace, pos, t, t2),
                       target=t, contrast=t2, position=pos, by=by, layer=l,
                       target_str=model.token_strings([t])[0] if model.tokenizer else None,
                       contrast_str=(model.token_strings([t2])[0]
                                     if model.tokenizer and t2 is not None else None))
