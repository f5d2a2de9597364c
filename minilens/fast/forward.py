"""The fast forward pass: the same equations as forward.py, with the order of work changed for
speed.

minilens's forward pass is forward.py; read that one. This file computes the same trace, and is
what ``Model.run`` uses by default (``model.fast = False`` switches to forward.py). It differs in
how, never in what:
- the work shared among the cores (workers.py): each layer in three rounds, its q, k and v by
  rows, attention by blocks of queries, then everything else by rows (``forward``'s docstring);
- blocked causal attention: queries ATTENTION_BLOCK at a time, each block skipping the keys the
  causal mask would zero, one reused scratch buffer, each kv head's keys multiplied by all of its
  group's queries at once; the softmax skips subtracting the row max where |q| |k| bounds a kv
  head's scores (pattern_rows); the pattern is not kept but derived from the recorded q and k
  when a trace first reads it (by the same blocks and decisions, so bit for bit the one used);
- in-place kernels (kernels.py) and ``out=`` where it saves a temporary the size of the
  activations; the MLP's element-wise passes a few rows at a time (``activate``);
- every value written into memory the model recycles (``rec.empty``: memory.py's ArrayPool).
tests/test_fast_paths.py and tests/test_properties.py check that every recorded key equals
forward.py's, for every family, in one worker and in several.

Shapes: ``n_seq`` tokens, ``d_model`` wide. ``run_batch`` adds a leading batch axis to the same
arrays; the functions below let that axis ride along (``...``).
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..config import ModelConfig
from ..loading.checkpoint import GlobalParams, LayerParams
from . import kernels, workers
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


# Queries per block in causal attention. Rows 0..n_seq are done at most ATTENTION_BLOCK at a time,
# and each block skips the keys after its last query, which the causal mask would zero anyway: about
# half the attention work at long sequences (issue 6). 128 rows keep a block's scores cache-sized.
# With several workers the blocks are smaller, so that they can be dealt out evenly (block_size).
ATTENTION_BLOCK = 128

# Each worker takes at least this many rows (tokens, over a batch), or the pass runs in one worker
# with BLAS threaded as numpy set it. With fewer, every worker streaming all of the weights through
# its own core, and two hand-offs per layer, cost more than sharing the element-wise passes gains:
# measured on SmolLM2, GPT-2-small and Llama-small shapes, two workers broke even at about 384
# tokens and gained from 512 on (tests/benchmarks/README.md, 2026-12-07).
WORKER_MIN_ROWS = 192


def block_size(n_seq: int, n_workers: int) -> int:
    """Queries per attention block: ATTENTION_BLOCK, or smaller with several workers, so that there
    are at least four blocks per worker to balance (block b costs about b + 1 units)."""
    if n_workers == 1:
        return ATTENTION_BLOCK
    return min(ATTENTION_BLOCK, max(16, -(-n_seq // (4 * n_workers))))


def attention_blocks(n_seq: int, window: int | None, block: int = ATTENTION_BLOCK):
    """The query blocks: (start, stop, lo) for queries start..stop-1, which see keys lo..stop-1 at
    most (lo > 0 only under a sliding window). Everything outside these rectangles is masked."""
    for start in range(0, n_seq, block):
        stop = min(start + block, n_seq)
        yield start, stop, (0 if window is None else max(0, start - window + 1))


def grouped_queries(q: np.ndarray, start: int, stop: int, group: int, scale: np.floating,
                    out: np.ndarray) -> np.ndarray:
    """Queries start..stop-1 times the attention scale, one row block per kv head, into out:
    query head h = kv * group + g reads kv head kv (grouped-query attention), so each kv head's
    keys are multiplied by its group's queries at once and never repeated.

    q [n_seq, n_heads, d_head] -> out [n_kv_heads, group * (stop - start), d_head]
    """
    *lead, _, n_heads, d_head = q.shape
    rows = stop - start
    q_block = q[..., start:stop, :, :].reshape(*lead, rows, n_heads // group, group, d_head)
    out_view = out.reshape(*lead, n_heads // group, group, rows, d_head)
    np.multiply(np.moveaxis(q_block, -4, -2), scale, out=out_view)
    return out


def key_lengths(k_T: np.ndarray) -> np.ndarray:
    """|k|^2 of every key.  k_T [..., n_kv_heads, d_head, n_seq] -> [..., n_kv_heads, n_seq]"""
    return (k_T * k_T).sum(-2)


def pattern_rows(q_g: np.ndarray, k_T: np.ndarray, softcap: float | None, mask: np.ndarray,
                 start: int, stop: int, lo: int, window: int | None, k_sq: np.ndarray,
                 out: np.ndarray) -> np.ndarray:
    """pattern = softmax(q k^T * scale + causal mask) for queries start..stop-1 and keys
    lo..stop-1, into out (q_g already scaled, grouped_queries; k_sq = key_lengths(k_T)).

    q_g [n_kv_heads, group * rows, d_head], k_T [n_kv_heads, d_head, n_seq]
    -> out [n_kv_heads, group * rows, stop - lo]
    """
    np.matmul(q_g, k_T[..., lo:stop], out=out)
    # A kv head's scores are at most its longest q times its longest k (Cauchy-Schwarz; 1% wider
    # for rounding). Where that is small, the softmax need not subtract each row's max
    # (kernels.softmax_in_place). Decided per sequence and kv head, from their own q and k: a
    # batch shared out among workers either way decides alike.
    bound = np.sqrt((q_g * q_g).sum(-1).max(-1)
                    * k_sq[..., lo:stop].max(-1)) * 1.01              # [..., n_kv_heads]
    if softcap:  # Gemma 2: a smooth clamp of the scores to (-cap, cap), before the mask
        out[...] = ops.softcap(out, softcap)
        bound = np.minimum(bound, softcap)
    rows = stop - start
    # Without a window only the keys start..stop-1 can lie after a query; with one, any can.
    first = start - lo if window is None else 0
    scores = out.reshape(*out.shape[:-2], -1, rows, stop - lo)     # [n_kv, group, rows, keys]
    np.copyto(scores[..., first:], -np.inf,                        # exp(-inf) = 0
              where=mask[start:stop, lo + first:stop])
    safe = bound <= kernels.EXP_SAFE
    if safe.all() or not safe.any():
        return kernels.softmax_in_place(out, float(bound.max()))
    for head in np.ndindex(bound.shape):
        kernels.softmax_in_place(out[head], float(bound[head]))
    return out


def attend(q: np.ndarray, k_T: np.ndarray, v_g: np.ndarray, z: np.ndarray, group: int,
           scale: np.floating, softcap: float | None, window: int | None, mask: np.ndarray,
           blocks: list) -> None:
    """z = pattern v at the query blocks ``blocks`` ((start, stop, lo) each), written into z.

    q [n_seq, n_heads, d_head], k_T [n_kv_heads, d_head, n_seq], v_g [n_kv_heads, n_seq, d_head]
    -> z [n_seq, n_heads, d_head] (the blocks' rows)

    The textbook equation with only the order of work changed: a block's pattern rows live in one
    reused scratch buffer, and the full pattern is never kept (the trace derives it from q and k
    with ``attention_pattern`` when first read). Keeping it would mean 150 MB of fresh memory per
    forward pass on GPT-2-small at 512 tokens, and first-touching that memory cost 0.13 s of a
    0.79 s forward pass at 2 threads (issue 6).
    """
    if not blocks:
        return
    *lead, n_seq, n_heads, d_head = q.shape
    n_kv, most = n_heads // group, max(stop - start for start, stop, _ in blocks)
    q_buf = np.empty((*lead, n_kv, group * most, d_head), dtype=q.dtype)
    scores_buf = np.empty((*lead, n_kv, group * most, n_seq), dtype=q.dtype)
    z_buf = np.empty_like(q_buf)
    k_sq = key_lengths(k_T)
    for start, stop, lo in blocks:
        rows = stop - start
        q_g = grouped_queries(q, start, stop, group, scale, q_buf[..., :group * rows, :])
        pattern = pattern_rows(q_g, k_T, softcap, mask, start, stop, lo, window, k_sq,
                               out=scores_buf[..., :group * rows, :stop - lo])
        z_g = np.matmul(pattern, v_g[..., lo:stop, :], out=z_buf[..., :group * rows, :])
        # [n_kv, group, rows, d_head] -> z's [rows, n_kv * group, d_head]
        z_rows = z[..., start:stop, :, :].reshape(*lead, rows, n_kv, group, d_head)
        z_rows[...] = np.moveaxis(z_g.reshape(*lead, n_kv, group, rows, d_head), -2, -4)


def attention_pattern(q: np.ndarray, k: np.ndarray, group: int, scale: np.floating,
                      softcap: float | None, window: int | None, block: int) -> np.ndarray:
    """The whole pattern from a trace's q and k, by the same blocks and functions as ``attend``,
    so it is bit for bit the one z was made from.

    q [n_seq, n_heads, d_head], k [n_seq, n_kv_heads, d_head]
    -> pattern [n_heads, n_seq(q), n_seq(k)] (masked entries exactly 0)
    """
    *lead, n_seq, n_heads, d_head = q.shape
    n_kv = n_heads // group
    k_T = np.ascontiguousarray(np.moveaxis(k, -3, -1))             # [n_kv, d_head, n_seq]
    pattern = np.zeros((*lead, n_kv, group, n_seq, n_seq), dtype=q.dtype)
    mask = causal_mask(n_seq, window)
    q_buf = np.empty((*lead, n_kv, group * block, d_head), dtype=q.dtype)
    scores_buf = np.empty((*lead, n_kv, group * block, n_seq), dtype=q.dtype)
    k_sq = key_lengths(k_T)
    for start, stop, lo in attention_blocks(n_seq, window, block):
        rows = stop - start
        q_g = grouped_queries(q, start, stop, group, scale, q_buf[..., :group * rows, :])
        rows_g = pattern_rows(q_g, k_T, softcap, mask, start, stop, lo, window, k_sq,
                              out=scores_buf[..., :group * rows, :stop - lo])
        pattern[..., start:stop, lo:stop] = rows_g.reshape(*lead, n_kv, group, rows, stop - lo)
    return pattern.reshape(*lead, n_heads, n_seq, n_seq)


class Layer:
    """The arrays of one layer's pass, made by the caller's thread before the workers fill their
    rows: the values a trace can keep (recycled memory, ``rec.empty``), and the keys and values
    in the layouts attention reads."""

    def __init__(self, lead: tuple, n_seq: int, cfg: ModelConfig, dtype, rec: Recorder,
                 resid_pre: np.ndarray):
        n_heads, n_kv, d_head, d_model = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model

        def new(*shape):
            return rec.empty((*lead, *shape), dtype)
        self.resid_pre = resid_pre                                     # [n_seq, d_model]
        self.scale_ln1, self.scale_ln2 = new(n_seq, 1), new(n_seq, 1)
        self.q = new(n_seq, n_heads, d_head)
        self.k, self.v = new(n_seq, n_kv, d_head), new(n_seq, n_kv, d_head)
        self.k_T, self.v_g = new(n_kv, d_head, n_seq), new(n_kv, n_seq, d_head)
        self.z = new(n_seq, n_heads, d_head)
        self.attn_out, self.resid_mid = new(n_seq, d_model), new(n_seq, d_model)
        self.mlp_post = new(n_seq, cfg.d_mlp)
        self.mlp_out, self.resid_post = new(n_seq, d_model), new(n_seq, d_model)
        if cfg.sandwich_norms:
            self.scale_ln1_post, self.scale_ln2_post = new(n_seq, 1), new(n_seq, 1)

    def part(self, batch) -> "Layer":
        """The same layer restricted to the batch entries ``batch`` (a slice; ``...``: all): views
        of every array."""
        part = object.__new__(Layer)
        vars(part).update({k: v[batch] for k, v in vars(self).items()})
        return part

    def record(self, rec: Recorder, l: int, cfg: ModelConfig, pattern_args: tuple) -> None:
        """Record layer l's values; the pattern as ``attention_pattern(q, k, *pattern_args)``,
        computed when first read."""
        for name in ("resid_pre", "scale_ln1", "q", "k", "v", "z", "attn_out", "resid_mid",
                     "scale_ln2", "mlp_post", "mlp_out", "resid_post"):
            rec(name, l, getattr(self, name))
        if cfg.sandwich_norms:
            rec("scale_ln1_post", l, self.scale_ln1_post)
            rec("scale_ln2_post", l, self.scale_ln2_post)
        # [n_heads, n_seq(q), n_seq(k)], computed from q and k when the trace is first asked for it
        rec.derived("pattern", l, attention_pattern, (self.q, self.k), *pattern_args)


def begin_block(t: Layer, rows: slice, w: LayerParams, cfg: ModelConfig,
                rope: tuple | None) -> None:
    """Layer t's first norm, q, k and v (RoPE applied), at rows ``rows``."""
    x = t.resid_pre[..., rows, :]                                      # [rows, d_model]
    normed, t.scale_ln1[..., rows, :] = norm(x, w.ln1_w, w.ln1_b, cfg)
    q, k, v = (t.q[..., rows, :, :], t.k[..., rows, :, :], t.v[..., rows, :, :])
    for out, W, b in ((q, w.W_Q, w.b_Q), (k, w.W_K, w.b_K), (v, w.W_V, w.b_V)):
        # written straight into the recorded array: [rows, heads * d_head] is a view of its
        # [rows, heads, d_head] (the last two axes are contiguous)
        linear(normed, W, b, out=out.reshape(*out.shape[:-2], -1))
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's d_head dims, before RoPE (in place)
        kernels.normalize(q, w.q_norm_w, None, "rmsnorm", cfg.norm_eps, out=q)
        kernels.normalize(k, w.k_norm_w, None, "rmsnorm", cfg.norm_eps, out=k)
    if rope is not None:  # rotated in place
        cos, sin = rope[0][rows], rope[1][rows]
        kernels.apply_rope(q, cos, sin, out=q)
        kernels.apply_rope(k, cos, sin, out=k)
    t.k_T[..., rows] = np.moveaxis(k, -3, -1)                         # [n_kv, d_head, rows]
    t.v_g[..., rows, :] = np.swapaxes(v, -3, -2)                      # [n_kv, rows, d_head]


# Rows per piece of the MLP's element-wise passes (bias, activation, gate): a piece of 32 x d_mlp
# numbers stays in the core's cache from one pass to the next.
ACTIVATION_ROWS = 32


def activate(pre: np.ndarray, b: np.ndarray | None, act: str, out: np.ndarray,
             up: np.ndarray | None = None, b_up: np.ndarray | None = None) -> None:
    """mlp_post = act(pre + b), times (up + b_up) for a gated MLP, into out, ACTIVATION_ROWS rows
    at a time; pre and up are overwritten.  [..., rows, d_mlp] -> out [..., rows, d_mlp]"""
    fn = kernels.ACTIVATIONS[act]
    for a in range(0, pre.shape[-2], ACTIVATION_ROWS):
        piece = (..., slice(a, a + ACTIVATION_ROWS), slice(None))
        if b is not None:
            pre[piece] += b
        fn(pre[piece], out=out[piece])
        if up is not None:
            if b_up is not None:
                up[piece] += b_up
            out[piece] *= up[piece]


def end_block(t: Layer, rows: slice, w: LayerParams, cfg: ModelConfig) -> None:
    """Layer t from attention's z to resid_post, at rows ``rows``."""
    z = t.z[..., rows, :, :]
    z = z.reshape(*z.shape[:-2], cfg.n_heads * cfg.d_head)
    attn_out = linear(z, w.W_O, w.b_O, out=t.attn_out[..., rows, :])
    if cfg.sandwich_norms:  # Gemma 2: what attention writes to the stream is the post-norm output
        _, t.scale_ln1_post[..., rows, :] = norm(attn_out, w.ln1_post_w, None, cfg, out=attn_out)
    resid_pre, resid_mid = t.resid_pre[..., rows, :], t.resid_mid[..., rows, :]
    np.add(resid_pre, attn_out, out=resid_mid)
    # A parallel residual (GPT-NeoX, Phi) feeds the MLP the block's input, not resid_mid.
    normed, t.scale_ln2[..., rows, :] = norm(resid_pre if cfg.parallel_residual else resid_mid,
                                             w.ln2_w, w.ln2_b, cfg)
    mlp_post = t.mlp_post[..., rows, :]                            # [rows, d_mlp]
    if cfg.gated_mlp:
        if w.W_gate_in is not None:                 # both branches in one product
            both = linear(normed, w.W_gate_in, None)                   # [rows, 2 d_mlp]
            gate, up = both[..., :cfg.d_mlp], both[..., cfg.d_mlp:]
        else:
            gate, up = linear(normed, w.W_gate, None), linear(normed, w.W_in, None)
        activate(gate, w.b_gate, cfg.act, mlp_post, up, w.b_in)
    else:
        activate(linear(normed, w.W_in, None), w.b_in, cfg.act, mlp_post)
    mlp_out = linear(mlp_post, w.W_out, w.b_out, out=t.mlp_out[..., rows, :])
    if cfg.sandwich_norms:
        _, t.scale_ln2_post[..., rows, :] = norm(mlp_out, w.ln2_post_w, None, cfg, out=mlp_out)
    np.add(resid_mid, mlp_out, out=t.resid_post[..., rows, :])


def forward(ids: np.ndarray, g: GlobalParams, layers, cfg: ModelConfig,
            rec: Recorder, read: slice = slice(None)) -> np.ndarray:
    """Token ids -> logits, recording the stream.  [n_seq] int -> [n_seq, d_vocab]

    ``read``: the positions whose logits are computed, as in forward.py (``slice(0, 0)``: none;
    the tuned lens's fit reads only the stream).

    The work of each layer is shared among workers (fast/workers.py: one thread per core, BLAS at
    one thread in each): attention by blocks of queries dealt out so that each worker's blocks
    cost about the same, everything else by contiguous rows. So a layer is three rounds:
    1. its q, k, v: each worker's rows through the norm, the products and RoPE (after the layer's
       weights are fetched, when the last layer's are dropped: one layer's weights at a time);
    2. attention: each worker computes z at its query blocks (reading every row's k and v);
    3. each worker takes its rows from z through W_O, the MLP and the residual adds to
       resid_post.
    A batch of at least as many sequences as workers is shared by sequences instead: each worker
    takes all the rows and blocks of its own sequences, in products over all of their rows.
    """
    *lead, n_seq = ids.shape
    lead = tuple(lead)
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
    dtype = x.dtype
    rope = ops.rope_tables(cfg.rope, n_seq, dtype) if cfg.positional == "rope" else None
    # One causal mask per distinct sliding window, shared by the layers that have it.
    masks = {window: causal_mask(n_seq, window) for window in set(cfg.layer_windows)}

    n_rows = int(np.prod(lead, dtype=np.int64)) * n_seq
    n = max(1, min(workers.n_workers(), n_rows // max(1, WORKER_MIN_ROWS)))
    by_sequence = len(lead) == 1 and lead[0] >= n > 1
    if by_sequence:         # worker w: sequences batch[w], all their rows and query blocks
        batch, rows = workers.shares(lead[0], n), [slice(None)] * n
        block = block_size(n_seq, 1)
    else:                   # worker w: rows rows[w] of every sequence, and its query blocks
        n = min(n, n_seq)
        batch, rows = [...] * n, workers.shares(n_seq, n)
        block = block_size(n_seq, n)
    group, scale = cfg.n_heads // cfg.n_kv_heads, dtype.type(cfg.attn_scale)
    dealt = {}                                       # window -> each worker's query blocks
    for window in masks:
        blocks = list(attention_blocks(n_seq, window, block))
        dealt[window] = ([blocks] * n if by_sequence else
                         [[blocks[i] for i in mine] for mine in
                          workers.balanced([(b - a) * (b - lo) for a, b, lo in blocks], n)])

    L = cfg.n_layers
    if hasattr(layers, "widen_all"):     # loading/checkpoint.py's LazyLayers
        layers.widen_all()
    t, params = Layer(lead, n_seq, cfg, dtype, rec, x), layers[0]
    workers.split(lambda w: begin_block(t.part(batch[w]), rows[w], params, cfg, rope), n)
    for l in range(L):
        window = cfg.layer_windows[l]

        def attention(w: int) -> None:
            mine = t.part(batch[w])
            attend(mine.q, mine.k_T, mine.v_g, mine.z, group, scale, cfg.attn_softcap, window,
                   masks[window], dealt[window][w])
        workers.split(attention, n)
        workers.split(lambda w: end_block(t.part(batch[w]), rows[w], params, cfg), n)
        t.record(rec, l, cfg, (group, scale, cfg.attn_softcap, window, block))
        # Weights are fetched here, in this thread (a layer widened on first use is widened
        # once), and one layer's at a time: a streamed model (cache_layers=False) holds one
        # widened layer, never two.
        del params
        if l + 1 < L:
            t, params = Layer(lead, n_seq, cfg, dtype, rec, t.resid_post), layers[l + 1]
            workers.split(lambda w: begin_block(t.part(batch[w]), rows[w], params, cfg, rope), n)
    x = t.resid_post
    rec("resid_final", None, x)
    x = x[..., read, :]
    normalized, scale_final = norm(x, g.lnf_w, g.lnf_b, cfg, out=rec.empty(x.shape, x.dtype))
    rec("scale_final", None, scale_final)
    rec("normalized", None, normalized)
    # [n_seq, d_vocab]
    logits = rec.empty((*x.shape[:-1], cfg.d_vocab), x.dtype)
    # Each worker its share of the vocabulary: it reads only its columns of W_U (rows would have
    # every worker stream all of it).
    cols = workers.shares(cfg.d_vocab, n)
    workers.split(lambda w: linear(normalized, g.W_U[:, cols[w]],
                                   None if g.b_U is None else g.b_U[cols[w]],
                                   logits[..., cols[w]]), n)
    # Gemma 2: logits -> cap * tanh(logits / cap); attribution works before the cap
    if cfg.final_softcap:
        rec("logits_precap", None, logits)
        logits = ops.softcap(logits, cfg.final_softcap)
    return logits
