"""The forward pass, read top to bottom: embed -> block x n_layers -> final norm -> unembed.

One function per equation; the local names are the trace's keys, and ``rec(key, layer, value)``
records each value where it is made. Families differ only by data in ModelConfig (which norm,
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
from .ops import (ACTIVATIONS, apply_rope, causal_mask, gqa_repeat, layer_norm, linear, rms_norm,
                  rope_tables, softcap, softmax)
from .loading.checkpoint import GlobalParams, LayerParams


def record_nothing(name: str, layer: int | None, value: np.ndarray) -> None:
    """The default ``rec``: keep nothing."""


def forward(ids: np.ndarray, g: GlobalParams, layers, cfg: ModelConfig, rec=record_nothing) -> np.ndarray:
    """Token ids -> logits, recording the stream.  [n_seq] int -> [n_seq, d_vocab]"""
    n_seq = ids.shape[-1]
    embed = g.W_E[ids] * g.W_E.dtype.type(cfg.embed_scale)           # [n_seq, d_model]; Gemma: sqrt(d_model)
    rec("embed", None, embed)
    resid = embed
    if cfg.positional == "learned":                                    # GPT-2
        pos_embed = np.broadcast_to(g.W_pos[:n_seq], embed.shape)      # [n_seq, d_model]
        rec("pos_embed", None, pos_embed)
        resid = embed + pos_embed
    rope = rope_tables(cfg.rope, n_seq, embed.dtype) if cfg.positional == "rope" else None
    for l, w in enumerate(layers):
        resid = block(resid, w, cfg, rope, rec, l)
    rec("resid_final", None, resid)
    return unembed(final_norm(resid, g, cfg, rec), g, cfg, rec)


def block(resid_pre: np.ndarray, w: LayerParams, cfg: ModelConfig, rope, rec, l: int) -> np.ndarray:
    """One transformer block: x + attn(norm(x)), then + mlp(norm(.)).  [n_seq, d_model] -> same"""
    rec("resid_pre", l, resid_pre)
    attn_out = attention(norm(resid_pre, w.ln1_w, w.ln1_b, cfg, rec, "scale_ln1", l), w, cfg, rope, rec, l)
    if cfg.sandwich_norms:                           # Gemma 2: a norm on what attention writes
        attn_out = norm(attn_out, w.ln1_post_w, None, cfg, rec, "scale_ln1_post", l)
    rec("attn_out", l, attn_out)
    resid_mid = resid_pre + attn_out
    rec("resid_mid", l, resid_mid)
    mlp_in = resid_pre if cfg.parallel_residual else resid_mid   # GPT-NeoX, Phi: both read resid_pre
    mlp_out = mlp(norm(mlp_in, w.ln2_w, w.ln2_b, cfg, rec, "scale_ln2", l), w, cfg, rec, l)
    if cfg.sandwich_norms:
        mlp_out = norm(mlp_out, w.ln2_post_w, None, cfg, rec, "scale_ln2_post", l)
    rec("mlp_out", l, mlp_out)
    resid_post = resid_mid + mlp_out
    rec("resid_post", l, resid_post)
    return resid_post


def norm(x: np.ndarray, gamma, beta, cfg: ModelConfig, rec, key: str, l: int | None) -> np.ndarray:
    """The family's norm; its divisor s is recorded as ``key`` (attribution freezes it)."""
    if cfg.norm == "layernorm":
        normed, s = layer_norm(x, gamma, beta, cfg.norm_eps)
    else:
        normed, s = rms_norm(x, gamma, cfg.norm_eps)
    rec(key, l, s)                                                     # [n_seq, 1]
    return normed


def attention(x: np.ndarray, w: LayerParams, cfg: ModelConfig, rope, rec, l: int) -> np.ndarray:
    """Causal multi-head self-attention.  [n_seq, d_model] -> [n_seq, d_model]"""
    *lead, n_seq, _ = x.shape
    n_heads, n_kv_heads, d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    q = linear(x, w.W_Q, w.b_Q).reshape(*lead, n_seq, n_heads, d_head)        # [n_seq, n_heads, d_head]
    k = linear(x, w.W_K, w.b_K).reshape(*lead, n_seq, n_kv_heads, d_head)     # [n_seq, n_kv_heads, d_head]
    v = linear(x, w.W_V, w.b_V).reshape(*lead, n_seq, n_kv_heads, d_head)     # [n_seq, n_kv_heads, d_head]
    if cfg.qk_norm:                                  # Qwen3: RMSNorm over each head's q and k
        q, k = rms_norm(q, w.q_norm_w, cfg.norm_eps)[0], rms_norm(k, w.k_norm_w, cfg.norm_eps)[0]
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    rec("q", l, q)
    rec("k", l, k)
    rec("v", l, v)

    group = n_heads // n_kv_heads                    # query head h reads kv head h // group
    q = q.swapaxes(-3, -2)                                             # [n_heads, n_seq, d_head]
    k = gqa_repeat(k, group).swapaxes(-3, -2)                          # [n_heads, n_seq, d_head]
    v = gqa_repeat(v, group).swapaxes(-3, -2)                          # [n_heads, n_seq, d_head]
    scores = q @ k.swapaxes(-1, -2) * x.dtype.type(cfg.attn_scale)    # [n_heads, n_seq(q), n_seq(k)]
    if cfg.attn_softcap:                             # Gemma 2: before the mask
        scores = softcap(scores, cfg.attn_softcap)
    pattern = softmax(scores + causal_mask(n_seq, cfg.layer_windows[l], x.dtype))
    rec("pattern", l, pattern)
    z = (pattern @ v).swapaxes(-3, -2)                                 # [n_seq, n_heads, d_head]
    rec("z", l, z)
    return linear(z.reshape(*lead, n_seq, n_heads * d_head), w.W_O, w.b_O)   # [n_seq, d_model]


def mlp(x: np.ndarray, w: LayerParams, cfg: ModelConfig, rec, l: int) -> np.ndarray:
    """act(x W_in + b_in) W_out + b_out; gated (SwiGLU, GeGLU): act(x W_gate) * (x W_in).
    [n_seq, d_model] -> [n_seq, d_model]"""
    act = ACTIVATIONS[cfg.act]
    if cfg.gated_mlp:
        mlp_post = act(linear(x, w.W_gate, w.b_gate)) * linear(x, w.W_in, w.b_in)   # [n_seq, d_mlp]
    else:
        mlp_post = act(linear(x, w.W_in, w.b_in))                                    # [n_seq, d_mlp]
    rec("mlp_post", l, mlp_post)
    return linear(mlp_post, w.W_out, w.b_out)                                        # [n_seq, d_model]


def final_norm(resid_final: np.ndarray, g: GlobalParams, cfg: ModelConfig, rec=record_nothing) -> np.ndarray:
    """N(x_L): the final norm.  [n_seq, d_model] -> [n_seq, d_model]. The lens applies it to any layer."""
    normalized = norm(resid_final, g.lnf_w, g.lnf_b, cfg, rec, "scale_final", None)
    rec("normalized", None, normalized)
    return normalized


def unembed(normalized: np.ndarray, g: GlobalParams, cfg: ModelConfig, rec=record_nothing) -> np.ndarray:
    """logits = N(x) W_U + b_U, then Gemma 2's soft-cap.  [n_seq, d_model] -> [n_seq, d_vocab]"""
    logits = linear(normalized, g.W_U, g.b_U)
    if cfg.final_softcap:                            # attribution works before the cap
        rec("logits_precap", None, logits)
        logits = softcap(logits, cfg.final_softcap)
    return logits
