"""The forward pass, read top to bottom: embed -> block x n_layers -> final norm -> unembed.

One function per equation; the local names are the trace's keys, and ``x = rec(key, layer, x)``
records each value where it is made. It is also the one place where interventions happen: ``rec``
returns the value the rest of the pass uses, which an intervention may have replaced
(trace.Recorder; ``model.run(ids, interventions=...)``).

Families differ only by data in ModelConfig (which norm,
which activation, learned or rotary positions, parallel residual, Qwen3's q/k norm, Gemma 2's
sandwich norms and soft-caps, sliding windows), and the loader has already put every weight in
``[d_in, d_out]`` under its math name (weights.py).

This is the pass to read. ``Model.run`` uses fast/forward.py by default: the same equations with
the work reordered for speed, tested equal to this file (tests/test_fast_paths.py). Set
``model.fast = False`` to run this one.

Shapes: n_seq tokens, d_model wide; ``...`` is an optional leading batch axis (run_batch).
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .loading.checkpoint import GlobalParams, LayerParams
from .ops import (
    ACTIVATIONS,
    apply_rope,
    causal_mask,
    gqa_repeat,
    layer_norm,
    linear,
    rms_norm,
    rope_tables,
    softcap,
    softmax,
)


def record_nothing(name: str, layer: int | None, value: np.ndarray) -> np.ndarray:
    """The default ``rec``: keep nothing, change nothing."""
    return value


def forward(ids: np.ndarray, g: GlobalParams, layers, cfg: ModelConfig, rec=record_nothing,
            start: int = 0, resid: np.ndarray | None = None,
            read: slice = slice(None)) -> np.ndarray:
    """Token ids -> logits, recording the stream.  [n_seq] int -> [n_seq, d_vocab]

    ``start``, ``resid``: begin at block ``start`` with ``resid`` as its resid_pre, instead of at
    the embedding (activation patching at layer l need not redo layers 0..l-1). ``read``: the
    positions whose logits are computed (patching reads only the last one).
    """
    n_seq = ids.shape[-1]
    if resid is None:
        # [n_seq, d_model]; Gemma scales by sqrt(d_model), the others by 1
        embed = g.W_E[ids] * g.W_E.dtype.type(cfg.embed_scale)
        resid = embed = rec("embed", None, embed)
        if cfg.positional == "learned":                            # GPT-2
            pos_embed = rec("pos_embed", None, np.broadcast_to(g.W_pos[:n_seq], embed.shape))
            resid = embed + pos_embed                              # [n_seq, d_model]
    rope = rope_tables(cfg.rope, n_seq, resid.dtype) if cfg.positional == "rope" else None
    # The causal mask, built once: one per distinct sliding window (most families: one in all).
    masks = {window: causal_mask(n_seq, window, resid.dtype)
             for window in set(cfg.layer_windows[start:])}              # [n_seq(q), n_seq(k)]
    for l in range(start, cfg.n_layers):
        resid = block(resid, layers[l], cfg, rope, rec, l, masks[cfg.layer_windows[l]])
    resid_final = rec("resid_final", None, resid)
    return unembed(final_norm(resid_final[..., read, :], g, cfg, rec), g, cfg, rec)


def block(resid_pre: np.ndarray, w: LayerParams, cfg: ModelConfig, rope, rec, l: int,
          mask: np.ndarray | None = None) -> np.ndarray:
    """One transformer block: x + attn(norm(x)), then + mlp(norm(.)).  [n_seq, d_model] -> same

    ``mask``: the causal mask of layer l's window (``forward`` passes the one it built); None
    builds it here."""
    resid_pre = rec("resid_pre", l, resid_pre)
    attn_in = norm(resid_pre, w.ln1_w, w.ln1_b, cfg, rec, "scale_ln1", l)
    attn_out = attention(attn_in, w, cfg, rope, rec, l, mask)
    if cfg.sandwich_norms:                           # Gemma 2: a norm on what attention writes
        attn_out = norm(attn_out, w.ln1_post_w, None, cfg, rec, "scale_ln1_post", l)
    attn_out = rec("attn_out", l, attn_out)
    resid_mid = rec("resid_mid", l, resid_pre + attn_out)
    mlp_in = resid_pre if cfg.parallel_residual else resid_mid  # GPT-NeoX, Phi: both read resid_pre
    mlp_out = mlp(norm(mlp_in, w.ln2_w, w.ln2_b, cfg, rec, "scale_ln2", l), w, cfg, rec, l)
    if cfg.sandwich_norms:
        mlp_out = norm(mlp_out, w.ln2_post_w, None, cfg, rec, "scale_ln2_post", l)
    mlp_out = rec("mlp_out", l, mlp_out)
    return rec("resid_post", l, resid_mid + mlp_out)


def norm(x: np.ndarray, gamma, beta, cfg: ModelConfig, rec, key: str, l: int | None) -> np.ndarray:
    """The family's norm; its divisor s is recorded as ``key`` (attribution freezes it)."""
    if cfg.norm == "layernorm":
        normed, s = layer_norm(x, gamma, beta, cfg.norm_eps)
    else:
        normed, s = rms_norm(x, gamma, cfg.norm_eps)
    rec(key, l, s)                                                     # [n_seq, 1]
    return normed


def attention(x: np.ndarray, w: LayerParams, cfg: ModelConfig, rope, rec, l: int,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Causal multi-head self-attention.  [n_seq, d_model] -> [n_seq, d_model]

    ``mask`` [n_seq(q), n_seq(k)]: 0 where a query may attend to a key, -inf where not."""
    *lead, n_seq, _ = x.shape
    if mask is None:
        mask = causal_mask(n_seq, cfg.layer_windows[l], x.dtype)
    n_heads, n_kv_heads, d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    q = linear(x, w.W_Q, w.b_Q).reshape(*lead, n_seq, n_heads, d_head)    # [n_seq, n_heads, d_head]
    k = linear(x, w.W_K, w.b_K).reshape(*lead, n_seq, n_kv_heads, d_head)  # [n_seq, n_kv, d_head]
    v = linear(x, w.W_V, w.b_V).reshape(*lead, n_seq, n_kv_heads, d_head)  # [n_seq, n_kv, d_head]
    if cfg.qk_norm:                                  # Qwen3: RMSNorm over each head's q and k
        q, k = rms_norm(q, w.q_norm_w, cfg.norm_eps)[0], rms_norm(k, w.k_norm_w, cfg.norm_eps)[0]
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q, k, v = rec("q", l, q), rec("k", l, k), rec("v", l, v)

    group = n_heads // n_kv_heads                    # query head h reads kv head h // group
    q = q.swapaxes(-3, -2)                                             # [n_heads, n_seq, d_head]
    k = gqa_repeat(k, group).swapaxes(-3, -2)                          # [n_heads, n_seq, d_head]
    v = gqa_repeat(v, group).swapaxes(-3, -2)                          # [n_heads, n_seq, d_head]
    scores = q @ k.swapaxes(-1, -2) * x.dtype.type(cfg.attn_scale)   # [n_heads, n_seq(q), n_seq(k)]
    if cfg.attn_softcap:                             # Gemma 2: before the mask
        scores = softcap(scores, cfg.attn_softcap)
    pattern = softmax(scores + mask)                                   # masked entries exactly 0
    pattern = rec("pattern", l, pattern)
    z = rec("z", l, (pattern @ v).swapaxes(-3, -2))                    # [n_seq, n_heads, d_head]
    return linear(z.reshape(*lead, n_seq, n_heads * d_head), w.W_O, w.b_O)   # [n_seq, d_model]


def mlp(x: np.ndarray, w: LayerParams, cfg: ModelConfig, rec, l: int) -> np.ndarray:
    """act(x W_in + b_in) W_out + b_out; gated (SwiGLU, GeGLU): act(x W_gate) * (x W_in).
    [n_seq, d_model] -> [n_seq, d_model]"""
    act = ACTIVATIONS[cfg.act]
    if cfg.gated_mlp:
        mlp_post = act(linear(x, w.W_gate, w.b_gate)) * linear(x, w.W_in, w.b_in)  # [n_seq, d_mlp]
    else:
        mlp_post = act(linear(x, w.W_in, w.b_in))                                   # [n_seq, d_mlp]
    mlp_post = rec("mlp_post", l, mlp_post)
    return linear(mlp_post, w.W_out, w.b_out)                                 # [n_seq, d_model]


def final_norm(resid_final: np.ndarray, g: GlobalParams, cfg: ModelConfig,
               rec=record_nothing) -> np.ndarray:
    """N(x_L): the final norm.  [n_seq, d_model] -> [n_seq, d_model]. The lens applies it to any
    layer's stream."""
    normalized = norm(resid_final, g.lnf_w, g.lnf_b, cfg, rec, "scale_final", None)
    return rec("normalized", None, normalized)


def unembed(normalized: np.ndarray, g: GlobalParams, cfg: ModelConfig,
            rec=record_nothing) -> np.ndarray:
    """logits = N(x) W_U + b_U, then Gemma 2's soft-cap.  [n_seq, d_model] -> [n_seq, d_vocab]"""
    logits = linear(normalized, g.W_U, g.b_U)
    if cfg.final_softcap:                            # attribution works before the cap
        rec("logits_precap", None, logits)
        logits = softcap(logits, cfg.final_softcap)
    return logits
