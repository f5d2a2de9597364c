"""Greedy generation, with a KV cache: each new token runs through the layers alone.

Run naively, step t of generation runs the whole sequence of t tokens again. But attention is
causal: nothing that comes after a position changes what is computed at it, so the keys and
values of the tokens already in the sequence never change. A step can run only the new token
through the layers, and let its query read the earlier tokens' keys and values from a cache.
That is the KV cache: a step costs one token's pass plus its attention over the cache.

The cache reuses forward.py as it is. In forward.py, ``rec(key, layer, value)`` returns the
value the rest of the pass uses (that is how interventions work), and a KV cache is such an
intervention. Run on the new token alone, at layer l the cache answers the token's k and v with
[the earlier tokens' k and v; the new ones], so the new query attends to every position (a
single query row needs no causal mask: it may see every key). Two values also need the token's
true position p, where forward.py, seeing one token, puts it at position 0:

- GPT-2's learned ``pos_embed``: the cache answers W_pos[p] for W_pos[0];
- RoPE: forward.py rotates q and k by position 0, which is the identity (cos 0 = 1 and sin 0 = 0
  exactly), and the cache rotates them by p.

Under a sliding window (Mistral, Gemma 2) the cache keeps only the last ``window`` keys, which
are all the next query may see. ``Model.run`` stays stateless: a cache lives only inside one call
of ``greedy``. tests/test_generate.py checks each cached step's logits against a full run.

Generation stops at the model's context (``context_limit``): GPT-2 has learned positions for
n_positions tokens and none beyond; a rotary model was trained up to max_position_embeddings (a
GGUF file's context_length) and can be run past it on request, where RoPE extrapolates, usually
into nonsense.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .config import ModelConfig
from .forward import forward
from .ops import apply_rope, rope_tables


def context_limit(cfg: ModelConfig) -> int | None:
    """How many positions the model was made for: GPT-2's learned positions (n_positions), or a
    rotary model's max_position_embeddings (a GGUF file's context_length); None when the config
    names no limit."""
    if cfg.positional == "learned":
        return cfg.n_ctx
    return cfg.rope.max_position_embeddings


def can_extrapolate(cfg: ModelConfig) -> bool:
    """Can the model run past context_limit at all? Rotary positions can (RoPE is a formula of
    the position); learned positions end with the table."""
    return cfg.positional == "rope"


def frequencies_grow(cfg: ModelConfig, n_seq: int) -> bool:
    """Dynamic NTK RoPE rescales every position's frequencies once the sequence outgrows
    max_position_embeddings (ops.rope_inv_freq), so keys cached at a shorter length go stale."""
    rope = cfg.rope
    return (rope is not None and rope.kind == "dynamic" and rope.max_position_embeddings is not None
            and n_seq > rope.max_position_embeddings)


class KVCache:
    """Per layer, the rotated keys and the values of the positions run so far.

    ``last_logits(ids)`` runs forward.py on the ids not yet cached (the whole prompt at first,
    then one token per step) with the cache as its ``rec``, and returns the logits that predict
    the next token.
    """

    def __init__(self, model):
        self.g, self.layers, self.cfg = model.params, model.layers, model.cfg
        self.k: dict[int, np.ndarray] = {}      # layer -> [n_kept, n_kv_heads, d_head]
        self.v: dict[int, np.ndarray] = {}      # layer -> [n_kept, n_kv_heads, d_head]
        self.n_cached = 0                       # positions already run; the next one is p
        self.cos = self.sin = np.empty((0, 0))  # RoPE tables, grown as positions are reached

    def last_logits(self, ids: np.ndarray) -> np.ndarray:
        """The logits after ids[-1].  ids [n_seq] -> [d_vocab]"""
        new = ids[self.n_cached:]
        assert not self.n_cached or len(new) == 1, "after the prompt, one new token at a time"
        logits = forward(new, self.g, self.layers, self.cfg, rec=self, read=slice(-1, None))
        self.n_cached = len(ids)
        return logits[-1]

    def __call__(self, key: str, layer: int | None, value: np.ndarray) -> np.ndarray:
        """forward.py's ``rec``: put the new tokens at their positions, and answer k and v with
        the cache's."""
        p = self.n_cached                       # the position of the first token of this pass
        if key == "pos_embed":                  # [n_new, d_model]
            return self.g.W_pos[p:p + len(value)]
        if p and key in ("q", "k") and self.cfg.positional == "rope":
            value = apply_rope(value, *self.rope_row(p, value.dtype))  # [1, heads, d_head]
        if key not in ("k", "v"):
            return value
        cache = self.k if key == "k" else self.v
        seen = value if not p else np.concatenate([cache[layer], value])  # [n_seen, n_kv, d_head]
        window = self.cfg.layer_windows[layer]
        cache[layer] = seen if window is None else seen[-window:]
        # The prompt's own queries need all its keys (forward.py's mask applies the window);
        # a later token's query sees exactly what is kept.
        return seen if not p else cache[layer]

    def rope_row(self, p: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin at position p.  -> 2 x [1, rotary_dim]

        Rows of ops.rope_tables, whose rows do not depend on the table's length (dynamic RoPE
        past its limit aside, where greedy runs without the cache). The table doubles when p
        passes its end, so a step costs O(1), not O(p).
        """
        if p >= len(self.cos):
            n = max(2 * len(self.cos), p + 1)
            if self.cfg.rope.kind == "dynamic" and self.cfg.rope.max_position_embeddings:
                n = max(p + 1, min(n, self.cfg.rope.max_position_embeddings))
            self.cos, self.sin = rope_tables(self.cfg.rope, n, dtype)
        return self.cos[p:p + 1], self.sin[p:p + 1]


def greedy(model, ids: np.ndarray, past_context: bool = False,
           cache: bool = True) -> Iterator[int]:
    """Greedy next ids, one at a time, until the model's context is full.

    ``model`` is a minilens Model and ``ids`` checked ids [n_seq]. Each id is the argmax of the
    logits at the last position, and is appended before the next is computed; nothing is computed
    until the next id is asked for. The sequence never grows past ``context_limit`` unless
    ``past_context`` and the model can extrapolate. ``cache=False`` re-runs the whole sequence
    each step (``model(ids)``, the reference the cache is tested against).
    """
    cfg = model.cfg
    limit = context_limit(cfg)
    go_past = past_context and can_extrapolate(cfg)
    kv = KVCache(model) if cache else None
    while limit is None or len(ids) < limit or go_past:
        if kv is None or frequencies_grow(cfg, len(ids)):
            logits = model(ids)[-1]
        else:
            logits = kv.last_logits(ids)
        next_id = int(logits.argmax())
        ids = np.append(ids, next_id)
        yield next_id
