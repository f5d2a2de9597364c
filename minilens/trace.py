"""Trace: the recorded residual stream of one forward pass.

Keys follow TransformerLens's hook vocabulary, so that people who know it feel at home:

=====================  =============================  ==============================================
key                    shape                          meaning
=====================  =============================  ==============================================
"embed"                [n_seq, d_model]               token embeddings W_E[ids]
                                                      (Gemma: times sqrt(d_model))
"pos_embed"            [n_seq, d_model]               learned position embeddings (GPT-2 only)
("resid_pre", l)       [n_seq, d_model]               the stream entering block l
("scale_ln1", l)       [n_seq, 1]                     the divisor of block l's first norm
("attn_out", l)        [n_seq, d_model]               what attention writes to the stream
("scale_ln1_post", l)  [n_seq, 1]                     Gemma 2: divisor of the norm on attention's
                                                      output
("resid_mid", l)       [n_seq, d_model]               resid_pre + attn_out
("scale_ln2", l)       [n_seq, 1]                     the divisor of block l's second norm
("mlp_out", l)         [n_seq, d_model]               what the MLP writes to the stream
("scale_ln2_post", l)  [n_seq, 1]                     Gemma 2: divisor of the norm on the MLP's
                                                      output
("resid_post", l)      [n_seq, d_model]               resid_mid + mlp_out
("q"|"k"|"v", l)       [n_seq, n_(kv_)heads, d_head]  per-head queries (after RoPE), keys, values
("z", l)               [n_seq, n_heads, d_head]       each head's output before W_O
("pattern", l)         [n_heads, n_seq, n_seq]        attention probabilities [head, query, key] (*)
("mlp_post", l)        [n_seq, d_mlp]                 the MLP's hidden activations (before W_out)
"scale_final"          [n_seq, 1]                     the final norm's divisor on the last residual
"resid_final"          [n_seq, d_model]               the last residual stream (== resid_post, L-1)
"normalized"           [n_seq, d_model]               N(resid_final): the final normalized stream
"logits_precap"        [n_seq, d_vocab]               Gemma 2: the logits before the final soft-cap
"logits"               [n_seq, d_vocab]               (also trace.logits), after any soft-cap
=====================  =============================  ==============================================

(*) In the fast forward pass (fast/forward.py) the pattern is derived, not stored: it keeps the
scores of only one block of queries at a time, and the trace recomputes a layer's pattern from its
recorded q and k, by the same blocks and the same function, the first time ``trace["pattern", l]``
is read (then keeps it): bit for bit the pattern that z was made from (tests/test_fast_paths.py).

The arrays are ordinary numpy arrays. In the fast forward pass their memory comes from the model's
pool (fast/memory.py): once a trace and every view of its arrays are gone, the model reuses it.

A trace pickles with its arrays and a reference to its model's files (Model.__reduce__), so it can
come back from a multiprocessing worker or go into an on-disk cache; copy.deepcopy copies the
arrays and shares the model.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import numpy as np

from . import checks
from .errors import InputError, NotRecordedError

LAYER_KEYS = ("resid_pre", "scale_ln1", "q", "k", "v", "z", "pattern", "attn_out", "scale_ln1_post",
              "resid_mid", "scale_ln2", "mlp_post", "mlp_out", "scale_ln2_post", "resid_post")
GLOBAL_KEYS = ("embed", "pos_embed", "resid_final", "scale_final", "normalized", "logits_precap",
               "logits")
ALL_KEYS = LAYER_KEYS + GLOBAL_KEYS


# ``Model.run(ids, record=...)``: named sets of keys, for when a full trace is too big (issue 19).
# The logits are always kept. Memory, in numbers of the compute dtype, for L layers, T tokens and
# d = d_model (README, "How much a trace holds"): "stream" (L + 1) T d, "sublayers" (4 L + 1) T d,
# "all" about L T (6 d + 2 n_kv_heads d_head + d_mlp) plus the attention patterns when read.
RECORD_PRESETS: dict[str, frozenset | None] = {
    # the residual stream entering every block, and leaving the last: what the logit lens reads
    "stream": frozenset({"embed", "pos_embed", "resid_pre", "resid_final", "scale_final"}),
    # and what each sublayer writes to it: the lens with its "{l}_mid" rows, layer attribution
    "sublayers": frozenset({"embed", "pos_embed", "resid_pre", "resid_final", "scale_final",
                            "resid_mid", "attn_out", "mlp_out", "logits_precap"}),
    "all": None,
}


def record_names(record: str | None, names: Iterable[str] | None) -> Iterable[str] | None:
    """The keys to keep for ``record=`` (a preset of RECORD_PRESETS) together with ``names=``
    (their union); ``record=None`` leaves ``names`` as it is."""
    if record is None:
        return names
    if not isinstance(record, str) or record not in RECORD_PRESETS:
        raise InputError(f"record must be one of {', '.join(map(repr, RECORD_PRESETS))}, "
                         f"got {record!r}.")
    preset = RECORD_PRESETS[record]
    if preset is None:                                  # "all"
        return None
    if names is None:
        return preset
    if isinstance(names, str):
        raise InputError(f"names must be a collection of trace keys, e.g. {{'resid_mid'}}, "
                         f"got {names!r}.")
    return preset | set(names)


class Derived:
    """An activation computed on first read: ``fn(*arrays, *args)``.

    ``arrays`` carry any batch axis.
    """

    def __init__(self, fn, arrays: tuple, *args):
        self.fn, self.arrays, self.args = fn, arrays, args

    def __call__(self) -> np.ndarray:
        return self.fn(*self.arrays, *self.args)

    def __getitem__(self, b: int) -> "Derived":
        """Sequence b of a batch, still deferred."""
        return Derived(self.fn, tuple(a[b] for a in self.arrays), *self.args)


# The values an intervention may replace: every activation the forward pass computes and uses
# downstream (not the norms' divisors, which are recorded for attribution but recomputed as used).
INTERVENABLE = ("embed", "pos_embed", "resid_pre", "q", "k", "v", "pattern", "z", "attn_out",
                "resid_mid", "mlp_post", "mlp_out", "resid_post", "resid_final", "normalized")


class Recorder:
    """Decides which activations a forward pass keeps, and applies interventions.

    The forward pass calls ``x = rec(name, layer, x)`` where it makes each value (layer None for the
    global keys). ``rec`` returns the value the rest of the pass uses: the same array, or, where
    ``interventions`` names this (name, layer), its replacement.
    """

    def __init__(self, names: Iterable[str] | None, interventions: dict | None = None):
        if isinstance(names, str) or (names is not None and not hasattr(names, "__iter__")):
            raise InputError(f"names must be a collection of trace keys, e.g. {{'resid_pre'}}, "
                             f"got {names!r}.")
        if names is not None:
            names = list(names)
            odd = next((i for i, n in enumerate(names) if not isinstance(n, str)), None)
            if odd is not None:
                raise InputError(f"names must hold trace keys as strings, such as 'resid_pre', "
                                 f"got {checks.shown(names[odd])} among them. Layers are not "
                                 f"chosen here: a name records every layer.")
        self.names = None if names is None else set(names)
        unknown = sorted(map(repr, (self.names or set()) - set(ALL_KEYS)))
        if unknown:  # a typo would otherwise record nothing, and fail only later
            raise InputError(f"unknown trace key {unknown[0]} in names; "
                             f"keys are {', '.join(ALL_KEYS)}.")
        self.store: dict[tuple[str, int | None], np.ndarray] = {}
        # {(name, layer): function or array}, checked by Model
        self.interventions = interventions or {}
        self.intervened: set = set()                 # the (name, layer) keys actually replaced

    def wants(self, name: str) -> bool:
        return self.names is None or name in self.names

    def __call__(self, name: str, layer: int | None, value: np.ndarray) -> np.ndarray:
        if (name, layer) in self.interventions:
            value = self.intervene(name, layer, value)
        if self.wants(name):
            self.store[(name, layer)] = value
        return value

    def intervene(self, name: str, layer: int | None, value: np.ndarray) -> np.ndarray:
        """The replacement for one value: fn(value), or the given array; same shape and dtype."""
        what = self.interventions[(name, layer)]
        key = name if layer is None else (name, layer)
        new = what(value) if callable(what) else what
        if not isinstance(new, np.ndarray):
            raise InputError(f"the intervention on {key!r} returned {type(new).__name__}, "
                             f"not an array: return the replacement value "
                             f"(an ndarray of shape {value.shape}).")
        if new.shape != value.shape or new.dtype != value.dtype:
            raise InputError(f"the intervention on {key!r} returned shape {new.shape} {new.dtype}, "
                             f"but the value it replaces is {value.shape} {value.dtype}: "
                             f"return an array of the same shape and dtype "
                             f"(edit a copy of the input).")
        self.intervened.add(key)
        return new


class Trace:
    """Everything one forward pass recorded, plus the model that made it.

    ``trace["resid_pre", l]`` accepts negative layers, as in Python. ``trace.model`` lets the lens
    and the attribution work from the trace alone.
    """

    def __init__(self, model: Any, ids: np.ndarray, store: dict, logits: np.ndarray,
                 intervened: frozenset = frozenset()):
        self.model = model                        # the Model that ran (model.py); not imported here
        self.ids = ids                            # [n_seq] int64
        self._store = store
        self.logits = logits                      # [n_seq, d_vocab]
        self.intervened = intervened              # the keys an intervention replaced in this run

    @property
    def n_seq(self) -> int:
        return len(self.ids)

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    def keys(self) -> list:
        """What was recorded, as keys that ``trace[key]`` accepts: "embed", ("resid_pre", 0), ..."""
        return [name if layer is None else (name, layer) for name, layer in self._store]

    def layer_index(self, layer: int) -> int:
        """A layer index, negative allowed, checked against the model's depth."""
        return checks.layer(layer, self.n_layers)

    def __contains__(self, key) -> bool:
        try:
            self._stored_key(key)  # checks the key without computing a derived value
        except (KeyError, InputError):  # not recorded, or not a valid key at all
            return False
        return True

    def __getitem__(self, key) -> np.ndarray:
        stored = self._stored_key(key)
        if stored == ("logits", None):
            return self.logits
        value = self._store[stored]
        if isinstance(value, Derived):
            value = self._store[stored] = value()
        return value

    def _stored_key(self, key) -> tuple[str, int | None]:
        """The (name, layer) that ``key`` names in the store, with negative layers resolved."""
        if not (isinstance(key, str) or (isinstance(key, tuple) and len(key) == 2
                                         and isinstance(key[0], str))):
            raise InputError(f"trace keys are a name such as 'embed' or a (name, layer) pair "
                             f"such as ('resid_pre', 3), got {checks.shown(key)}.")
        if isinstance(key, tuple):
            name, layer = key
            if name not in LAYER_KEYS:
                raise InputError(f"{name!r} is not a per-layer key; "
                                 f"per-layer keys are {', '.join(LAYER_KEYS)}.")
            stored = (name, self.layer_index(layer))
        else:
            name = key
            if name == "logits":
                return ("logits", None)
            if name in LAYER_KEYS:
                raise InputError(f"{name!r} is recorded per layer: use trace[{name!r}, layer].")
            if name not in GLOBAL_KEYS:
                raise InputError(f"unknown trace key {name!r}; keys are {', '.join(ALL_KEYS)}.")
            stored = (name, None)
        absent = self._absent_in_family(name)
        if absent and stored not in self._store:
            raise NotRecordedError(f"{key!r} does not exist in a {self.model.cfg.family} model: "
                                   f"{absent}")
        if stored not in self._store:
            raise NotRecordedError(f"{key!r} was not recorded in this trace. "
                                   f"Run model.run(ids) without names=..., "
                                   f"or include {name!r} in names.")
        return stored

    def _absent_in_family(self, name: str) -> str | None:
        """Why the model's family never makes the value ``name``, or None if it does."""
        cfg = self.model.cfg
        if name == "pos_embed" and cfg.positional != "learned":
            return ("its positions are rotary (RoPE turns q and k inside attention), not a "
                    "learned embedding added to the stream, so there is no 'pos_embed'. The "
                    "stream starts at 'embed'.")
        if name in ("scale_ln1_post", "scale_ln2_post") and not cfg.sandwich_norms:
            return ("it has no norm on its sublayers' outputs (only Gemma 2 has), so there is no "
                    f"{name!r}.")
        if name == "logits_precap" and not cfg.final_softcap:
            return "its logits are not soft-capped (only Gemma 2's are): 'logits' is all there is."
        return None

    def __deepcopy__(self, memo: dict) -> "Trace":
        """copy.deepcopy copies the arrays and shares the model: a model holds no state between
        runs, and copying it would reopen its files. (pickle does carry the model, as a reference
        to its files: Model.__reduce__.)"""
        memo[id(self.model)] = self.model
        twin = Trace.__new__(Trace)
        memo[id(self)] = twin
        vars(twin).update(copy.deepcopy(vars(self), memo))
        return twin

    def __repr__(self) -> str:
        cfg = self.model.cfg
        return (f"Trace({cfg.family}, n_seq={self.n_seq}, n_layers={cfg.n_layers}, "
                f"{len(self._store)} arrays, dtype={self.logits.dtype})")


def check_trace(value: Any, function: str) -> Trace:
    """The ``trace`` argument of an analysis function: a Trace, as ``model.run`` returns."""
    if not isinstance(value, Trace):
        hint = (" Run the model first: trace = model.run(ids)."
                if hasattr(value, "run") and hasattr(value, "cfg") else "")
        raise InputError(f"{function} reads a Trace (from model.run(ids)), "
                         f"got {checks.shown(value)}.{hint}")
    return value
