"""The forward pass, one function per equation, and the Model that runs it.

Every family runs through the same ``forward``. They differ only by data in ModelConfig
(which norm, which activation, learned or rotary positions, parallel residual), and the
loader has already renamed and transposed every weight to ``[d_in, d_out]``.

The newer families' switches (qk_norm, sandwich_norms, embed_scale, attn_scale, attn_softcap,
final_softcap, layer_windows, parallel_residual) are each one named branch below. What the trace,
the lens and the attribution mean under a parallel residual, sandwich norms or a final soft-cap is
stated in README.md, "Supported families".

Shapes: ``n_seq`` tokens, ``d_model`` wide. ``run_batch`` adds a leading batch axis to the same
arrays; the functions below are written for one sequence and let that axis ride along (``...``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from . import ops
from .config import ModelConfig
from .errors import CheckpointError, InputError, TokenizerMissingError
from .tokenizer import Tokenizer
from .memory import ArrayPool
from .trace import Recorder, Trace
from .gguf_checkpoint import find_gguf, gguf_tokenizer, open_gguf, rope_freq_factors
from .weights import (LAYOUTS, Checkpoint, GlobalParams, LayerParams, LazyLayers, blas_ready,
                      find_safetensors, resolve)


# ------------------------------------------------------------------------------------------
# The math
# ------------------------------------------------------------------------------------------

def linear(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
    """x @ W + b, into out if given.  [..., d_in] -> [..., d_out]"""
    y = np.matmul(x, W, out=out)
    if b is not None:
        y += b
    return y


def norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None, cfg: ModelConfig,
         out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The family's norm (into out if given), and its divisor s (recorded: attribution freezes it).
    -> [n_seq, d_model], [n_seq, 1]"""
    return ops.normalize(x, gamma, beta, cfg.norm, cfg.norm_eps, out)


def causal_mask(n_seq: int, window: int | None = None) -> np.ndarray:
    """True where query q may not attend to key k.  -> [n_seq, n_seq] bool

    k > q always (causal). With a sliding window, also k <= q - window: query q sees the ``window``
    keys q - window + 1 .. q, itself included (transformers' sliding_window_overlay: kv > q - window).
    """
    q, k = np.arange(n_seq)[:, None], np.arange(n_seq)[None, :]
    return (k > q) | (k <= q - window) if window is not None else k > q


# Queries per block in causal attention. Rows 0..n_seq are done ATTENTION_BLOCK at a time, and each
# block skips the keys after its last query, which the causal mask would zero anyway: about half
# the attention work at long sequences (issue 6). 128 rows keep a block's scores cache-sized.
ATTENTION_BLOCK = 128


def attention_blocks(n_seq: int, window: int | None):
    """The query blocks: (start, stop, lo) for queries start..stop-1, which see keys lo..stop-1 at most
    (lo > 0 only under a sliding window). Everything outside these rectangles is masked."""
    for start in range(0, n_seq, ATTENTION_BLOCK):
        stop = min(start + ATTENTION_BLOCK, n_seq)
        yield start, stop, (0 if window is None else max(0, start - window + 1))


def pattern_rows(q: np.ndarray, k_T: np.ndarray, scale: np.floating, softcap: float | None, mask: np.ndarray,
                 start: int, stop: int, lo: int, out: np.ndarray) -> np.ndarray:
    """pattern = softmax(q k^T * scale + causal mask) for queries start..stop-1 and keys lo..stop-1, into out.

    q [n_heads, n_seq, d_head], k_T [n_heads, d_head, n_seq] -> out [n_heads, stop - start, stop - lo]
    """
    np.matmul(q[..., start:stop, :], k_T[..., lo:stop], out=out)
    out *= scale
    if softcap:  # Gemma 2: a smooth clamp of the scores to (-cap, cap), before the mask
        out[...] = ops.softcap(out, softcap)
    out[..., mask[start:stop, lo:stop]] = -np.inf                 # exp(-inf) = 0 exactly: no magic -1e10
    return ops.softmax_in_place(out)


def causal_attention(q: np.ndarray, k_T: np.ndarray, v: np.ndarray, scale: np.floating, softcap: float | None,
                     window: int | None, out: np.ndarray | None = None) -> np.ndarray:
    """z = pattern v, with pattern = softmax(q k^T * scale + causal mask).

    q [n_heads, n_seq, d_head], k_T [n_heads, d_head, n_seq], v [n_heads, n_seq, d_head]
    -> z [n_seq, n_heads, d_head]

    The textbook equation, with only the order of work changed for speed. Each block of queries
    gets its pattern rows in one reused [n_heads, block, n_seq] scratch buffer, and z is written in
    the [n_seq, n_heads, d_head] layout that W_O reads. The full pattern is never kept here: the
    trace derives it from q and k with ``attention_pattern`` when it is first read. Keeping it would
    mean 150 MB of fresh memory per forward pass on GPT-2-small at 512 tokens (600 MB at 1024), and
    first-touching that memory cost 0.13 s of a 0.79 s forward pass at 2 threads (issue 6).
    """
    *lead, n_heads, n_seq, d_head = q.shape
    scratch = np.empty((*lead, n_heads, min(ATTENTION_BLOCK, n_seq), n_seq), dtype=q.dtype)
    z = np.empty((*lead, n_seq, n_heads, d_head), dtype=q.dtype) if out is None else out
    z_heads = np.swapaxes(z, -3, -2)                               # a view of z: [n_heads, n_seq, d_head]
    mask = causal_mask(n_seq, window)
    for start, stop, lo in attention_blocks(n_seq, window):
        pattern = pattern_rows(q, k_T, scale, softcap, mask, start, stop, lo, out=scratch[..., :stop - start, :stop - lo])
        np.matmul(pattern, v[..., lo:stop, :], out=z_heads[..., start:stop, :])
    return z


def attention_pattern(q: np.ndarray, k_T: np.ndarray, scale: np.floating, softcap: float | None,
                      window: int | None) -> np.ndarray:
    """The whole pattern, by the same blocks as causal_attention, so it is bit for bit the one z was made from.

    q [n_heads, n_seq, d_head], k_T [n_heads, d_head, n_seq] -> pattern [n_heads, n_seq(q), n_seq(k)]
    (masked entries exactly 0)
    """
    *lead, n_heads, n_seq, _ = q.shape
    pattern = np.zeros((*lead, n_heads, n_seq, n_seq), dtype=q.dtype)
    mask = causal_mask(n_seq, window)
    for start, stop, lo in attention_blocks(n_seq, window):
        pattern_rows(q, k_T, scale, softcap, mask, start, stop, lo, out=pattern[..., start:stop, lo:stop])
    return pattern


def gqa_repeat(x: np.ndarray, group: int) -> np.ndarray:
    """Grouped-query attention: query head h reads kv head h // group (repeat-interleave, not modulo).

    [n_seq, n_kv_heads, d_head] -> [n_seq, n_heads, d_head]. (np.repeat copies even when group is 1.)
    """
    return np.repeat(x, group, axis=-2) if group > 1 else x


def keys_T(k: np.ndarray, group: int) -> np.ndarray:
    """k^T per query head, as a contiguous copy (about 2x faster in the score products than a view).

    [n_seq, n_kv_heads, d_head] -> [n_heads, d_head, n_seq]
    """
    return np.ascontiguousarray(np.moveaxis(gqa_repeat(k, group), -3, -1))


def recorded_pattern(q: np.ndarray, k: np.ndarray, group: int, scale: np.floating, softcap: float | None,
                     window: int | None) -> np.ndarray:
    """The attention pattern from a trace's q [n_seq, n_heads, d_head] and k [n_seq, n_kv_heads, d_head],
    in the same layouts and blocks as the forward pass.  -> [n_heads, n_seq(q), n_seq(k)]"""
    return attention_pattern(np.swapaxes(q, -3, -2), keys_T(k, group), scale, softcap, window)


def split_heads(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, n_heads: int, d_head: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """x W + b, one d_head slice per head, into out if given.  [n_seq, d_model] -> [n_seq, n_heads, d_head]"""
    flat_out = None if out is None else out.reshape(*out.shape[:-2], n_heads * d_head)
    return linear(x, W, b, flat_out).reshape(*x.shape[:-1], n_heads, d_head)


def attention(x: np.ndarray, w: LayerParams, cfg: ModelConfig, rope: tuple | None,
              rec: Recorder, l: int) -> np.ndarray:
    """Multi-head causal self-attention.  [n_seq, d_model] -> [n_seq, d_model]

    (``rec.empty(shape, dtype)`` is memory that the model recycles; see Recorder.empty.)
    """
    *lead, n_seq, _ = x.shape
    H, H_kv, d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    q = split_heads(x, w.W_Q, w.b_Q, H, d_head, rec.empty((*lead, n_seq, H, d_head), x.dtype))
    k = split_heads(x, w.W_K, w.b_K, H_kv, d_head, rec.empty((*lead, n_seq, H_kv, d_head), x.dtype))
    v = split_heads(x, w.W_V, w.b_V, H_kv, d_head, rec.empty((*lead, n_seq, H_kv, d_head), x.dtype))
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's d_head dims, before RoPE (in place)
        ops.rms_norm(q, w.q_norm_w, cfg.norm_eps, out=q), ops.rms_norm(k, w.k_norm_w, cfg.norm_eps, out=k)
    if rope is not None:  # rotated in place
        ops.apply_rope(q, *rope, out=q), ops.apply_rope(k, *rope, out=k)
    rec("q", l, q), rec("k", l, k), rec("v", l, v)    # [n_seq, n_heads, d_head], k and v: [n_seq, n_kv_heads, d_head]

    group = H // H_kv
    scale = x.dtype.type(cfg.attn_scale if cfg.attn_scale is not None else 1.0 / math.sqrt(d_head))
    window = cfg.layer_windows[l] if cfg.layer_windows else None
    q_heads = np.swapaxes(q, -3, -2)                                                   # [n_heads, n_seq, d_head]
    v_heads = np.swapaxes(gqa_repeat(v, group), -3, -2)                                # [n_heads, n_seq, d_head]
    z = causal_attention(q_heads, keys_T(k, group), v_heads, scale, cfg.attn_softcap, window,
                         out=rec.empty((*lead, n_seq, H, d_head), x.dtype))
    # [n_heads, n_seq(q), n_seq(k)], computed from q and k when the trace is first asked for it.
    rec.derived("pattern", l, recorded_pattern, (q, k), group, scale, cfg.attn_softcap, window)
    rec("z", l, z)                                                                     # [n_seq, n_heads, d_head]
    return linear(z.reshape(*lead, n_seq, H * d_head), w.W_O, w.b_O, rec.empty(x.shape, x.dtype))  # [n_seq, d_model]


def mlp(x: np.ndarray, w: LayerParams, cfg: ModelConfig, rec: Recorder, l: int) -> np.ndarray:
    """act(x W_in + b_in) W_out + b_out, or the gated form act(x W_gate) * (x W_in).  [n_seq, d_model] -> same"""
    act = ops.ACTIVATIONS[cfg.act]
    pre = linear(x, w.W_in, w.b_in)                                                    # [n_seq, d_mlp]
    out = rec.empty(pre.shape, pre.dtype)
    if cfg.gated_mlp:
        mlp_post = np.multiply(act(linear(x, w.W_gate, w.b_gate)), pre, out=out)
    else:
        mlp_post = act(pre, out=out)
    rec("mlp_post", l, mlp_post)
    return linear(mlp_post, w.W_out, w.b_out, rec.empty(x.shape, x.dtype))             # [n_seq, d_model]


def block(resid_pre: np.ndarray, w: LayerParams, cfg: ModelConfig, rope: tuple | None,
          rec: Recorder, l: int) -> np.ndarray:
    """One transformer block.  [n_seq, d_model] -> [n_seq, d_model]"""
    shape, dtype = resid_pre.shape, resid_pre.dtype
    rec("resid_pre", l, resid_pre)
    normed, scale_ln1 = norm(resid_pre, w.ln1_w, w.ln1_b, cfg)
    rec("scale_ln1", l, scale_ln1)
    attn_out = attention(normed, w, cfg, rope, rec, l)
    if cfg.sandwich_norms:  # Gemma 2: what attention writes to the stream is the post-norm output
        attn_out, scale_ln1_post = norm(attn_out, w.ln1_post_w, None, cfg, out=rec.empty(shape, dtype))
        rec("scale_ln1_post", l, scale_ln1_post)
    resid_mid = np.add(resid_pre, attn_out, out=rec.empty(shape, dtype))
    # A parallel residual (GPT-NeoX, Phi) feeds the MLP the block's input, not resid_mid.
    normed, scale_ln2 = norm(resid_pre if cfg.parallel_residual else resid_mid, w.ln2_w, w.ln2_b, cfg)
    rec("scale_ln2", l, scale_ln2)
    mlp_out = mlp(normed, w, cfg, rec, l)
    if cfg.sandwich_norms:
        mlp_out, scale_ln2_post = norm(mlp_out, w.ln2_post_w, None, cfg, out=rec.empty(shape, dtype))
        rec("scale_ln2_post", l, scale_ln2_post)
    resid_post = np.add(resid_mid, mlp_out, out=rec.empty(shape, dtype))
    rec("attn_out", l, attn_out), rec("resid_mid", l, resid_mid)
    rec("mlp_out", l, mlp_out), rec("resid_post", l, resid_post)
    return resid_post


def forward(ids: np.ndarray, g: GlobalParams, layers, cfg: ModelConfig, rec: Recorder) -> np.ndarray:
    """Token ids -> logits, recording the stream.  [n_seq] int -> [n_seq, d_vocab]"""
    n_seq = ids.shape[-1]
    embed = g.W_E[ids]                                                                 # [n_seq, d_model]
    if cfg.embed_scale is not None:
        # Gemma: times sqrt(d_model), rounded to the compute dtype first, as transformers does
        # (its normalizer is a tensor in the hidden states' dtype).
        embed = embed * embed.dtype.type(cfg.embed_scale)
    rec("embed", None, embed)
    x = embed
    if cfg.positional == "learned":
        pos_embed = np.broadcast_to(g.W_pos[:n_seq], embed.shape)                      # [n_seq, d_model]
        rec("pos_embed", None, pos_embed)
        x = embed + pos_embed
    rope = ops.rope_tables(cfg.rope, n_seq, x.dtype) if cfg.positional == "rope" else None
    for l in range(cfg.n_layers):
        x = block(x, layers[l], cfg, rope, rec, l)
    rec("resid_final", None, x)
    normalized, scale_final = norm(x, g.lnf_w, g.lnf_b, cfg, out=rec.empty(x.shape, x.dtype))
    rec("scale_final", None, scale_final), rec("normalized", None, normalized)
    logits = linear(normalized, g.W_U, g.b_U, rec.empty((*x.shape[:-1], cfg.d_vocab), x.dtype))  # [n_seq, d_vocab]
    if cfg.final_softcap:  # Gemma 2: logits -> cap * tanh(logits / cap); attribution works before the cap
        rec("logits_precap", None, logits)
        logits = ops.softcap(logits, cfg.final_softcap)
    return logits


# ------------------------------------------------------------------------------------------
# The model object: weights, tokenizer, input checks
# ------------------------------------------------------------------------------------------

class Model:
    """A loaded checkpoint. ``run`` returns a Trace; the model itself holds no state between runs."""

    def __init__(self, cfg: ModelConfig, params: GlobalParams, layers, dtype=np.float32,
                 tokenizer: Tokenizer | None = None, folder: Path | None = None, files: tuple = ()):
        self.cfg = cfg
        self.params = params              # global weights: W_E, W_pos, lnf_w, lnf_b, W_U, b_U
        self.layers = layers              # a Sequence of LayerParams, widened lazily
        self.dtype = np.dtype(dtype)
        self.tokenizer = tokenizer
        self.tokenizer_problem: str | None = None   # why a GGUF file's tokenizer could not be built
        self.checkpoint = None                      # set by load(): the stored tensors by name
        self.folder = folder
        self.files = files
        self.pool = ArrayPool()           # the memory of dropped traces, for the next run (memory.py)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Model({c.family}: {c.n_layers} layers, d_model={c.d_model}, heads={c.n_heads}/{c.n_kv_heads}, "
                f"d_vocab={c.d_vocab}, dtype={self.dtype.name}, from {self.folder})")

    # ---- tokens ---------------------------------------------------------------------------
    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            if self.tokenizer_problem:  # a GGUF file whose tokenizer minilens cannot build
                raise TokenizerMissingError(f"{self.tokenizer_problem} The model still runs on token ids: "
                                            f"pass a list or array of ints instead of text.")
            raise TokenizerMissingError(
                f"this model ({self.folder}) has no tokenizer.json, so it cannot read text. "
                f"Pass token ids (a list or array of ints) instead, or put the tokenizer.json beside config.json."
            )
        return self.tokenizer

    def to_tokens(self, text: str, prepend_bos: bool | None = None) -> np.ndarray:
        """Text -> ids [n_seq] int64. Llama-style families prepend BOS; override with prepend_bos."""
        return self._need_tokenizer().encode(text, prepend_bos)

    def to_str_tokens(self, ids) -> list[str]:
        if isinstance(ids, str):
            ids = self.to_tokens(ids)
        return self._need_tokenizer().str_tokens(self.check_ids(ids))

    def decode(self, ids) -> str:
        return self._need_tokenizer().decode(self.check_ids(ids))

    def to_single_token(self, token: str | int) -> int:
        """A token given as a string (which must be exactly one token) or an id, as a checked id."""
        if isinstance(token, str):
            token_id = self._need_tokenizer().single_token(token)
            if not 0 <= token_id < self.cfg.d_vocab:  # a tokenizer.json from another model
                raise InputError(f"{token!r} tokenizes to id {token_id}, beyond this model's vocabulary "
                                 f"0..{self.cfg.d_vocab - 1}: tokenizer.json does not belong to this checkpoint.")
            return token_id
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
            raise InputError(f"a token must be a string (exactly one token) or an int id, got {token!r} "
                             f"({type(token).__name__}).")
        if not 0 <= token < self.cfg.d_vocab:
            raise InputError(f"token id {token} is out of range: this model's vocabulary is 0..{self.cfg.d_vocab - 1}.")
        return int(token)

    def check_ids(self, ids, allow_batch: bool = False) -> np.ndarray:
        """Any array-like of token ids (list, numpy, or a torch tensor via __array__) -> checked int64 array.

        [n_seq] or [1, n_seq] -> [n_seq]; with allow_batch, [batch, n_seq] stays 2-D.
        """
        if isinstance(ids, str):
            ids = self.to_tokens(ids)  # then checked like any ids: text can be empty, or too long
        try:
            arr = np.asarray(ids)
        except (ValueError, TypeError):
            raise InputError("token ids must be a rectangular array; a batch needs sequences of equal length "
                             "(pad them, or run them one at a time).") from None
        if arr.dtype == object:
            odd = next((x for x in arr.reshape(-1) if not isinstance(x, (int, np.integer))), None)
            raise InputError(f"token ids must be ints, but the input holds {odd!r} ({type(odd).__name__}). "
                             f"Pass a list or array of ints, or a str to tokenize.")
        if arr.ndim == 2 and arr.shape[0] == 1 and not allow_batch:
            arr = arr[0]
        if arr.ndim != (2 if allow_batch and arr.ndim == 2 else 1):
            raise InputError(f"token ids must have shape [n_seq]{' or [batch, n_seq]' if allow_batch else ' or [1, n_seq]'},"
                             f" got shape {list(arr.shape)}." + (" Wrap a single id in a list: [id]." if arr.ndim == 0 else "")
                             + (" For several sequences use model.run_batch(ids)." if arr.ndim == 2 else ""))
        if arr.size == 0 or arr.shape[-1] == 0:
            raise InputError("the input is empty: give at least one token.")
        if arr.dtype.kind in "USO":
            raise InputError(f"token ids must be ints, got strings such as {str(arr.reshape(-1)[0])!r}. "
                             f"To run text, pass one str (model.run('some text')), not a list of strings.")
        if arr.dtype.kind not in "iu":
            raise InputError(f"token ids must be integers, got dtype {arr.dtype}. "
                             f"If they are whole numbers, cast them: ids.astype(int).")
        bad = (arr < 0) | (arr >= self.cfg.d_vocab)
        if bad.any():
            first = int(np.argwhere(bad)[0][-1])
            raise InputError(f"token id {arr.reshape(-1)[np.flatnonzero(bad)[0]]} at position {first} is out of range:"
                             f" this model's vocabulary is 0..{self.cfg.d_vocab - 1}. Were the ids made by another "
                             f"model's tokenizer? Use model.to_tokens(text).")
        if self.cfg.n_ctx is not None and arr.shape[-1] > self.cfg.n_ctx:
            raise InputError(f"the input has {arr.shape[-1]} tokens, but this {self.cfg.family} model has learned "
                             f"positions for only {self.cfg.n_ctx} (n_positions). Shorten the input.")
        return arr.astype(np.int64)

    # ---- running --------------------------------------------------------------------------
    def run(self, ids, names: Iterable[str] | None = None) -> Trace:
        """Run one sequence (text, a list of ints, or ids [n_seq] / [1, n_seq]) and record its stream.

        ``names`` limits what is kept (e.g. ``{"resid_pre"}``) when memory matters; logits are always kept.
        """
        ids = self.check_ids(ids)
        rec = Recorder(names, self.pool)
        logits = forward(ids, self.params, self.layers, self.cfg, rec)
        return Trace(self, ids, rec.store, logits)

    def run_batch(self, ids, names: Iterable[str] | None = None) -> list[Trace]:
        """Run several equal-length sequences at once ([batch, n_seq]); one Trace per sequence.

        The matrix products see batch * n_seq rows at once, which helps short sequences; the numbers
        equal running each sequence alone.
        """
        ids = self.check_ids(ids, allow_batch=True)
        ids = ids[None] if ids.ndim == 1 else ids
        rec = Recorder(names, self.pool)
        logits = forward(ids, self.params, self.layers, self.cfg, rec)
        return [Trace(self, ids[b], {key: value[b] for key, value in rec.store.items()}, logits[b])
                for b in range(len(ids))]

    def free_memory(self) -> None:
        """Give the memory of dropped traces back to the operating system (see minilens/memory.py).

        A model keeps as much as its last run asked for (at most 1 GiB), so that a run like the last one
        does not have to fault in new memory. ``model.pool = None`` switches the recycling off.
        """
        if self.pool is not None:                       # None: recycling switched off by the user
            self.pool.clear()

    def __call__(self, ids) -> np.ndarray:
        """The logits only.  -> [n_seq, d_vocab]"""
        return self.run(ids, names=()).logits

    def generate(self, ids, n_new: int = 20) -> np.ndarray:
        """Greedy decoding, re-running the whole sequence each step (minilens keeps no KV cache)."""
        ids = self.check_ids(ids)
        for _ in range(n_new):
            next_id = int(self(ids)[-1].argmax())
            ids = np.append(ids, next_id)
            if self.cfg.n_ctx is not None and len(ids) >= self.cfg.n_ctx:
                break
        return ids


# Widened layers are kept (cached) when, all together, they fit in this many bytes.
CACHE_LAYERS_MAX_BYTES = 2 << 30


def load(path_or_name, dtype=np.float32, check_finite: bool = False, cache_layers: bool | None = None) -> Model:
    """Load a Hugging Face checkpoint folder (or a model name from the local HF cache).

    ``dtype`` is the compute dtype: float32 by default, float64 as a reference mode. Stored
    F16/BF16/F32 weights are widened exactly. Tensors are memory-mapped read-only and each
    layer is widened on first use, so loading is quick and nothing is ever written to the folder.
    ``check_finite=True`` reads every weight once and names any tensor holding NaN or inf.

    ``cache_layers``: keep each layer once widened (fast repeated runs), or widen it afresh on every
    use and drop it after (peak memory: the stored checkpoint plus one widened layer). The default,
    None, decides by size: layers are cached when their widened bytes total at most
    CACHE_LAYERS_MAX_BYTES (2 GiB), so small models run fastest and a bf16 1B model does not
    need twice its stored size in RAM (issue 6).
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise InputError(f"dtype must be float32 or float64 (np.float32, np.float64), got {dtype or 'something else'}.")
    folder = resolve(path_or_name)
    gguf_path = find_gguf(folder)
    if gguf_path is not None:
        hf, ckpt = open_gguf(gguf_path)
        cfg = rope_freq_factors(ckpt.gguf, ModelConfig.from_hf(hf, source=f"{gguf_path} (its GGUF metadata)"))
        folder, files = gguf_path.parent, [gguf_path]
    else:
        cfg = ModelConfig.from_file(folder / "config.json")
        files = find_safetensors(folder)
        ckpt = Checkpoint(files, LAYOUTS[cfg.family])
    ckpt.validate(cfg)
    if check_finite:
        check_weights_finite(ckpt)
    params = blas_ready(ckpt.layout.globals(ckpt.getter(dtype), cfg))
    # A cheap default check: the global weights are already widened, so scanning them costs one pass.
    # If they hold NaN or inf, scan the whole checkpoint to name the first bad tensor.
    if not check_finite and not all(all_finite(a) for a in vars(params).values() if a is not None):
        check_weights_finite(ckpt)
    if cache_layers is None:
        cache_layers = ckpt.layer_elements(cfg) * dtype.itemsize <= CACHE_LAYERS_MAX_BYTES
    layers = LazyLayers(ckpt, cfg, dtype, cache=cache_layers)
    tokenizer_problem = None
    if gguf_path is not None:
        try:
            tokenizer = gguf_tokenizer(ckpt.gguf)
        except CheckpointError as e:  # an uncovered tokenizer type: the model still runs on ids
            tokenizer, tokenizer_problem = None, str(e)
    else:
        tok_path = folder / "tokenizer.json"
        tokenizer = Tokenizer(tok_path, cfg.bos_token_id, cfg.prepend_bos) if tok_path.is_file() else None
    model = Model(cfg, params, layers, dtype, tokenizer, folder, tuple(files))
    model.tokenizer_problem = tokenizer_problem
    model.checkpoint = ckpt                   # the stored tensors, by name (their dtypes, files, shapes)
    return model


def all_finite(a: np.ndarray) -> bool:
    """No NaN or inf in ``a``. min and max are NaN if any element is, and infinite if any is, so this
    needs no boolean temporary of a's size (a tenth of a second on a 1B model's embeddings; issue 6)."""
    return a.size == 0 or bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def check_weights_finite(ckpt: Checkpoint) -> None:
    """Read every tensor once (in float32) and name the first that holds NaN or inf."""
    get = ckpt.getter(np.float32)
    for name, info in ckpt.infos.items():
        if not all_finite(get(name, info.shape)):
            raise CheckpointError(f"tensor {name!r} in {info.file} holds NaN or inf values. "
                                  f"The checkpoint is corrupt or diverged in training; use another one.")
