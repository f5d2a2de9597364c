"""The fast forward pass: the same equations as forward.py, with the order of work changed for
speed.

minilens's forward pass is forward.py; read that one. This file computes the same trace, and is
what ``Model.run`` uses by default (``model.fast = False`` switches to forward.py). It differs in
how, never in what:
- blocked causal attention: queries ATTENTION_BLOCK at a time, each block skipping the keys the
  causal mask would zero, one reused scratch buffer; the pattern is not kept but derived from the
  recorded q and k when a trace first reads it (by the same blocks, so bit for bit the one used);
- in-place kernels (kernels.py) and ``out=`` everywhere, so that no activation-sized temporaries
  are allocated;
- every value written into memory the model recycles (``rec.empty``: memory.py's ArrayPool).
tests/test_fast_paths.py checks that every recorded key equals forward.py's, for every family.

Shapes: ``n_seq`` tokens, ``d_model`` wide. ``run_batch`` adds a leading batch axis to the same
arrays; the functions below let that axis ride along (``...``).
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..config import ModelConfig
from ..loading.checkpoint import GlobalParams, LayerParams
from . import kernels
from .recorder import PooledRecorder as Recorder


def linear(x: np.ndarray, W: np.ndarray, b: np.ndarray | None,
           out: np.ndarray | None = None) -> np.ndarray:
    """x @ W + b, into out if given.  [..., d_in] -> [..., d_out]"""
    if x.ndim > 2 and x.flags.c_contiguous and (out is None or out.flags.c_contiguous):
        # a batch's rows in one product (numpy's matmul would run one product per batch entry)
        flat_out = None if out is None else out.reshape(-1, W.shape[-1])
        y = np.matmul(x.reshape(-1, x.shape[-1]), W, out=flat_out)
        y = y.reshape(*x.shape[:-1], W.shape[-1])
    else:
        y = np.matmul(x, W, out=out)
    if b is not None:
        y += b
    return y


def norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None, cfg: ModelConfig,
         out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The family's norm (into out if given), and its divisor s (recorded: attribution freezes it).
    -> [n_seq, d_model], [n_seq, 1]"""
    return kernels.normalize(x, gamma, beta, cfg.norm, cfg.norm_eps, out)


def causal_mask(n_seq: int, window: int | None = None) -> np.ndarray:
    """True where query q may not attend to key k.  -> [n_seq, n_seq] bool

    k > q always (causal). With a sliding window, also k <= q - window: query q sees the ``window``
    keys q - window + 1 .. q, itself included (transformers' sliding_window_overlay:
    kv > q - window).
    """
    q, k = np.arange(n_seq)[:, None], np.arange(n_seq)[None, :]
    return (k > q) | (k <= q - window) if window is not None else k > q


# Queries per block in causal attention. Rows 0..n_seq are done ATTENTION_BLOCK at a time, and
# each block skips the keys after its last query, which the causal mask would zero anyway: about
# half the attention work at long sequences (issue 6). 128 rows keep a block's scores cache-sized.
ATTENTION_BLOCK = 128


def attention_blocks(n_seq: int, window: int | None):
    """The query blocks: (start, stop, lo) for queries start..stop-1, which see keys lo..stop-1 at
    most (lo > 0 only under a sliding window). Everything outside these rectangles is masked."""
    for start in range(0, n_seq, ATTENTION_BLOCK):
        stop = min(start + ATTENTION_BLOCK, n_seq)
        yield start, stop, (0 if window is None else max(0, start - window + 1))


def pattern_rows(q: np.ndarray, k_T: np.ndarray, scale: np.floating, softcap: float | None,
                 mask: np.ndarray, start: int, stop: int, lo: int, out: np.ndarray) -> np.ndarray:
    """pattern = softmax(q k^T * scale + causal mask) for queries start..stop-1 and keys
    lo..stop-1, into out.

    q [n_heads, n_seq, d_head], k_T [n_heads, d_head, n_seq]
    -> out [n_heads, stop - start, stop - lo]
    """
    np.matmul(q[..., start:stop, :], k_T[..., lo:stop], out=out)
    out *= scale
    if softcap:  # Gemma 2: a smooth clamp of the scores to (-cap, cap), before the mask
        out[...] = ops.softcap(out, softcap)
    out[..., mask[start:stop, lo:stop]] = -np.inf      # exp(-inf) = 0 exactly: no magic -1e10
    return kernels.softmax_in_place(out)


def causal_attention(q: np.ndarray, k_T: np.ndarray, v: np.ndarray, scale: np.floating,
                     softcap: float | None, window: int | None,
                     out: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """z = pattern v, with pattern = softmax(q k^T * scale + causal mask).

    q [n_heads, n_seq, d_head], k_T [n_heads, d_head, n_seq], v [n_heads, n_seq, d_head]
    -> z [n_seq, n_heads, d_head]

    The textbook equation, with only the order of work changed for speed. Each block of queries
    gets its pattern rows in one reused [n_heads, block, n_seq] scratch buffer, and z is written in
    the [n_seq, n_heads, d_head] layout that W_O reads. The full pattern is never kept here: the
    trace derives it from q and k with ``attention_pattern`` when it is first read. Keeping it
    would mean 150 MB of fresh memory per forward pass on GPT-2-small at 512 tokens (600 MB at
    1024), and first-touching that memory cost 0.13 s of a 0.79 s forward pass at 2 threads
    (issue 6).

    ``mask``: causal_mask(n_seq, window), which ``forward`` builds once for every layer with this
    window (an [n_seq, n_seq] bool is 34 MB at 6,000 tokens; issue 18); None builds it here.
    """
    *lead, n_heads, n_seq, d_head = q.shape
    scratch = np.empty((*lead, n_heads, min(ATTENTION_BLOCK, n_seq), n_seq), dtype=q.dtype)
    z = np.empty((*lead, n_seq, n_heads, d_head), dtype=q.dtype) if out is None else out
    z_heads = np.swapaxes(z, -3, -2)                # a view of z: [n_heads, n_seq, d_head]
    if mask is None:
        mask = causal_mask(n_seq, window)
    for start, stop, lo in attention_blocks(n_seq, window):
        pattern = pattern_rows(q, k_T, scale, softcap, mask, start, stop, lo,
                               out=scratch[..., :stop - start, :stop - lo])
        np.matmul(pattern, v[..., lo:stop, :], out=z_heads[..., start:stop, :])
    return z


def attention_pattern(q: np.ndarray, k_T: np.ndarray, scale: np.floating, softcap: float | None,
                      window: int | None) -> np.ndarray:
    """The whole pattern, by the same blocks as causal_attention, so it is bit for bit the one z
    was made from.

    q [n_heads, n_seq, d_head], k_T [n_heads, d_head, n_seq]
    -> pattern [n_heads, n_seq(q), n_seq(k)] (masked entries exactly 0)
    """
    *lead, n_heads, n_seq, _ = q.shape
    pattern = np.zeros((*lead, n_heads, n_seq, n_seq), dtype=q.dtype)
    mask = causal_mask(n_seq, window)
    for start, stop, lo in attention_blocks(n_seq, window):
        pattern_rows(q, k_T, scale, softcap, mask, start, stop, lo,
                     out=pattern[..., start:stop, lo:stop])
    return pattern


def keys_T(k: np.ndarray, group: int) -> np.ndarray:
    """k^T per query head, as a contiguous copy (about 2x faster in the score products than a view).

    [n_seq, n_kv_heads, d_head] -> [n_heads, d_head, n_seq]
    """
    return np.ascontiguousarray(np.moveaxis(ops.gqa_repeat(k, group), -3, -1))


def recorded_pattern(q: np.ndarray, k: np.ndarray, group: int, scale: np.floating,
                     softcap: float | None, window: int | None) -> np.ndarray:
    """The attention pattern from a trace's q [n_seq, n_heads, d_head] and
    k [n_seq, n_kv_heads, d_head], in the same layouts and blocks as the forward pass.
    -> [n_heads, n_seq(q), n_seq(k)]"""
    return attention_pattern(np.swapaxes(q, -3, -2), keys_T(k, group), scale, softcap, window)


def split_heads(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, n_heads: int, d_head: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """x W + b, one d_head slice per head, into out if given.
    [n_seq, d_model] -> [n_seq, n_heads, d_head]"""
    flat_out = None if out is None else out.reshape(*out.shape[:-2], n_heads * d_head)
    return linear(x, W, b, flat_out).reshape(*x.shape[:-1], n_heads, d_head)


def attention(x: np.ndarray, w: LayerParams, cfg: ModelConfig, rope: tuple | None,
              rec: Recorder, l: int, mask: np.ndarray) -> np.ndarray:
    """Multi-head causal self-attention.  [n_seq, d_model] -> [n_seq, d_model]

    (``rec.empty(shape, dtype)`` is memory that the model recycles; see Recorder.empty.
    ``mask``: causal_mask(n_seq, layer l's window), built once per forward pass.)
    """
    *lead, n_seq, _ = x.shape
    n_heads, n_kv_heads, d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    q = split_heads(x, w.W_Q, w.b_Q, n_heads, d_head,
                    rec.empty((*lead, n_seq, n_heads, d_head), x.dtype))
    k = split_heads(x, w.W_K, w.b_K, n_kv_heads, d_head,
                    rec.empty((*lead, n_seq, n_kv_heads, d_head), x.dtype))
    v = split_heads(x, w.W_V, w.b_V, n_kv_heads, d_head,
                    rec.empty((*lead, n_seq, n_kv_heads, d_head), x.dtype))
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's d_head dims, before RoPE (in place)
        kernels.normalize(q, w.q_norm_w, None, "rmsnorm", cfg.norm_eps, out=q)
        kernels.normalize(k, w.k_norm_w, None, "rmsnorm", cfg.norm_eps, out=k)
    if rope is not None:  # rotated in place
        kernels.apply_rope(q, *rope, out=q)
        kernels.apply_rope(k, *rope, out=k)
    rec("q", l, q)                                    # [n_seq, n_heads, d_head]
    rec("k", l, k)                                    # [n_seq, n_kv_heads, d_head]
    rec("v", l, v)                                    # [n_seq, n_kv_heads, d_head]

    group = n_heads // n_kv_heads
    scale = x.dtype.type(cfg.attn_scale)
    window = cfg.layer_windows[l]
    q_heads = np.swapaxes(q, -3, -2)                           # [n_heads, n_seq, d_head]
    v_heads = np.swapaxes(ops.gqa_repeat(v, group), -3, -2)    # [n_heads, n_seq, d_head]
    z = causal_attention(q_heads, keys_T(k, group), v_heads, scale, cfg.attn_softcap, window,
                         out=rec.empty((*lead, n_seq, n_heads, d_head), x.dtype), mask=mask)
    # [n_heads, n_seq(q), n_seq(k)], computed from q and k when the trace is first asked for it.
    rec.derived("pattern", l, recorded_pattern, (q, k), group, scale, cfg.attn_softcap, window)
    rec("z", l, z)                                             # [n_seq, n_heads, d_head]
    # [n_seq, d_model]
    return linear(z.reshape(*lead, n_seq, n_heads * d_head), w.W_O, w.b_O,
                  rec.empty(x.shape, x.dtype))


def mlp(x: np.ndarray, w: LayerParams, cfg: ModelConfig, rec: Recorder, l: int) -> np.ndarray:
    """act(x W_in + b_in) W_out + b_out, or the gated form act(x W_gate) * (x W_in).
    [n_seq, d_model] -> same"""
    act = kernels.ACTIVATIONS[cfg.act]
    up = linear(x, w.W_in, w.b_in)                  # [n_seq, d_mlp]: the linear (up) branch
    out = rec.empty(up.shape, up.dtype)
    if cfg.gated_mlp:
        mlp_post = np.multiply(act(linear(x, w.W_gate, w.b_gate)), up, out=out)
    else:
        mlp_post = act(up, out=out)
    rec("mlp_post", l, mlp_post)
    return linear(mlp_post, w.W_out, w.b_out, rec.empty(x.shape, x.dtype))     # [n_seq, d_model]


def block(resid_pre: np.ndarray, w: LayerParams, cfg: ModelConfig, rope: tuple | None,
          rec: Recorder, l: int, mask: np.ndarray) -> np.ndarray:
    """One transformer block.  [n_seq, d_model] -> [n_seq, d_model]"""
    shape, dtype = resid_pre.shape, resid_pre.dtype
    rec("resid_pre", l, resid_pre)
    normed, scale_ln1 = norm(resid_pre, w.ln1_w, w.ln1_b, cfg)
    rec("scale_ln1", l, scale_ln1)
    attn_out = attention(normed, w, cfg, rope, rec, l, mask)
    if cfg.sandwich_norms:  # Gemma 2: what attention writes to the stream is the post-norm output
        attn_out, scale_ln1_post = norm(attn_out, w.ln1_post_w, None, cfg,
                                        out=rec.empty(shape, dtype))
        rec("scale_ln1_post", l, scale_ln1_post)
    resid_mid = np.add(resid_pre, attn_out, out=rec.empty(shape, dtype))
    # A parallel residual (GPT-NeoX, Phi) feeds the MLP the block's input, not resid_mid.
    normed, scale_ln2 = norm(resid_pre if cfg.parallel_residual else resid_mid, w.ln2_w, w.ln2_b,
                             cfg)
    rec("scale_ln2", l, scale_ln2)
    mlp_out = mlp(normed, w, cfg, rec, l)
    if cfg.sandwich_norms:
        mlp_out, scale_ln2_post = norm(mlp_out, w.ln2_post_w, None, cfg,
                                       out=rec.empty(shape, dtype))
        rec("scale_ln2_post", l, scale_ln2_post)
    resid_post = np.add(resid_mid, mlp_out, out=rec.empty(shape, dtype))
    rec("attn_out", l, attn_out)
    rec("resid_mid", l, resid_mid)
    rec("mlp_out", l, mlp_out)
    rec("resid_post", l, resid_post)
    return resid_post


def forward(ids: np.ndarray, g: GlobalParams, layers, cfg: ModelConfig,
            rec: Recorder, read: slice = slice(None)) -> np.ndarray:
    """Token ids -> logits, recording the stream.  [n_seq] int -> [n_seq, d_vocab]

    ``read``: the positions whose logits are computed, as in forward.py (``slice(0, 0)``: none;
    the tuned lens's fit reads only the stream)."""
    n_seq = ids.shape[-1]
    embed = g.W_E[ids]                                                 # [n_seq, d_model]
    if cfg.embed_scale != 1:
        # Gemma: times sqrt(d_model), rounded to the compute dtype first, as transformers does
        # (its normalizer is a tensor in the hidden states' dtype).
        embed = embed * embed.dtype.type(cfg.embed_scale)
    rec("embed", None, embed)
    x = embed
    if cfg.positional == "learned":
        pos_embed = np.broadcast_to(g.W_pos[:n_seq], embed.shape)      # [n_seq, d_model]
        rec("pos_embed", None, pos_embed)
        x = embed + pos_embed
    rope = ops.rope_tables(cfg.rope, n_seq, x.dtype) if cfg.positional == "rope" else None
    # One causal mask per distinct sliding window, shared by the layers that have it.
    masks = {window: causal_mask(n_seq, window) for window in set(cfg.layer_windows)}
    for l in range(cfg.n_layers):
        x = block(x, layers[l], cfg, rope, rec, l, masks[cfg.layer_windows[l]])
    rec("resid_final", None, x)
    x = x[..., read, :]
    normalized, scale_final = norm(x, g.lnf_w, g.lnf_b, cfg, out=rec.empty(x.shape, x.dtype))
    rec("scale_final", None, scale_final)
    rec("normalized", None, normalized)
    # [n_seq, d_vocab]
    logits = linear(normalized, g.W_U, g.b_U, rec.empty((*x.shape[:-1], cfg.d_vocab), x.dtype))
    # Gemma 2: logits -> cap * tanh(logits / cap); attribution works before the cap
    if cfg.final_softcap:
        rec("logits_precap", None, logits)
        logits = ops.softcap(logits, cfg.final_softcap)
    return logits


