"""Causal interventions: activation patching, ablation, attention knockout, direct against total
effect.

The logit lens and attribution say what each part of the model *writes* toward a prediction.
Interventions say what the prediction *depends on*: change one activation, run the rest of the
model, and measure the change. Every intervention here is a ``model.run(..., interventions=...)``
on the textbook forward pass (forward.py), where each ``rec(...)`` is a place a value can be
replaced.

Activation patching (Vig et al. 2020, Meng et al. 2022; TransformerLens's patching.py) runs two
prompts of equal length, clean and corrupted, and copies one activation from one run into the
other:
- "denoising" (clean -> corrupted): run the corrupted prompt, patch in the clean activation. A
  high metric means this activation alone restores the clean behaviour.
- "noising" (corrupted -> clean): run the clean prompt, patch in the corrupted activation. A low
  metric means the clean behaviour needs this activation.
Patching at layer l starts at block l from the recorded stream (forward(..., start=l)), never
redoing layers 0..l-1, and runs every position (or head) of that layer as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import checks
from ..errors import InputError
from ..ops import log_softmax
from ..trace import Trace

METRICS = ("logit_diff", "logit_diff_normalized", "logprob")
DIRECTIONS = ("denoising", "noising")
BY = ("position", "head", "head_position")
PATCHABLE = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v",
             "pattern", "mlp_post")
HEAD_KEYS = {"z": "n_heads", "q": "n_heads", "pattern": "n_heads", "k": "n_kv_heads",
             "v": "n_kv_heads"}
BATCH = 64  # patched runs per batch: bounds the [batch, n_seq, d_vocab] logits


@dataclass
class PatchingResult:
    """The metric after each patch: ``values[layer, column]``, columns being positions or heads."""

    # [n_layers, n_cols] (by="head_position": [n_layers, n_heads, n_seq])
    values: np.ndarray
    key: str
    by: str
    direction: str
    metric: str
    layers: list[int]
    columns: list[str]              # position labels ("3: France") or head labels ("H4")
    clean: float                    # the metric on the clean run
    corrupted: float                # the metric on the corrupted run
    positions: list[str] = field(default_factory=list)

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k cells whose metric moved furthest from the base run's, as (label, value)."""
        base = self.corrupted if self.direction == "denoising" else self.clean
        flat = self.values.reshape(len(self.layers), -1)
        cols = self.columns if self.values.ndim == 2 else [f"{c} @{p}" for c in self.columns
                                                            for p in self.positions]
        k = checks.count(k, "k")
        order = np.argsort(-np.abs(flat - base), axis=None, kind="stable")[:k]
        return [(f"L{self.layers[i // flat.shape[1]]} {cols[i % flat.shape[1]]}",
                 float(flat.flat[i]))
                for i in order]

    def describe(self) -> str:
        arrow = "clean -> corrupted" if self.direction == "denoising" else "corrupted -> clean"
        return (f"{self.direction} ({arrow}): {self.key} patched by {self.by}; "
                f"metric {self.metric} (clean {self.clean:+.4f}, corrupted {self.corrupted:+.4f})")


def make_metric(model, metric, target, contrast) -> Callable[[np.ndarray], float]:
    """A function of a run's final logits [n_seq, d_vocab] -> one number (before normalisation).
    The built-in metrics read only the last position (``reads_last``)."""
    if callable(metric):
        def call(logits: np.ndarray) -> float:
            value = metric(logits)
            if np.ndim(value) != 0 or not np.isfinite(value):
                raise InputError(f"the metric returned {value!r}; it must return one finite number "
                                 f"for the logits [n_seq, d_vocab] of a run.")
            return float(value)
        call.reads_last = False
        return call
    if not isinstance(metric, str) or metric not in METRICS:
        raise InputError(f"metric {metric!r} is not known; use one of {', '.join(METRICS)}, "
                         f"or a function of the final logits "
                         f"[n_seq, d_vocab] returning one number.")
    if target is None:
        raise InputError(f"metric {metric!r} needs target= (the token the clean prompt predicts).")
    t = model.to_single_token(target)
    if metric == "logprob":
        def score(logits: np.ndarray) -> float:
            return float(log_softmax(logits[-1].astype(np.float64))[t])
    else:
        if contrast is None:
            raise InputError(f"metric {metric!r} needs contrast= "
                             f"(the token the corrupted prompt favours).")
        c = model.to_single_token(contrast)

        def score(logits: np.ndarray) -> float:
            return float(logits[-1, t]) - float(logits[-1, c])
    score.reads_last = True
    return score


def _aligned(model, clean, corrupted) -> tuple[np.ndarray, np.ndarray]:
    a = model.to_tokens(clean) if isinstance(clean, str) else model.check_ids(clean)
    b = model.to_tokens(corrupted) if isinstance(corrupted, str) else model.check_ids(corrupted)
    if len(a) != len(b):
        raise InputError(f"the clean prompt has {len(a)} tokens and the corrupted one {len(b)}; "
                         f"patching copies activations position by position, so they must align. "
                         f"Change words for words of the same token count "
                         f"(e.g. one name for another), and check with model.to_str_tokens.")
    return a, b


def _textbook_run(model, ids, names):
    fast, model.fast = model.fast, False
    try:
        return model.run(ids, names=names)
    finally:
        model.fast = fast


def activation_patching(model, clean, corrupted, metric="logit_diff", key: str = "resid_pre",
                        by: str = "position", direction: str = "denoising", target=None,
                        contrast=None, layers=None) -> PatchingResult:
    """Patch ``key`` from one run into the other, one layer and one position (or head) at a time.

    ``metric``: "logit_diff" (target minus contrast at the last position), "logit_diff_normalized"
    (0 = the corrupted run, 1 = the clean run), "logprob" (the target's log-probability), or a
    function of the final logits [n_seq, d_vocab]. ``by``: "position", "head" (every position of
    one head) or "head_position". Heads: ``z``, ``q`` and ``pattern`` have one per query head;
    ``k`` and ``v`` one per KV head (under grouped-query attention, a KV head serves a group of
    query heads, so patching it patches what the whole group reads).
    """
    if not isinstance(key, str) or key not in PATCHABLE:
        raise InputError(f"key {key!r} cannot be patched; "
                         f"patchable keys are {', '.join(PATCHABLE)}.")
    if not isinstance(by, str) or by not in BY:
        raise InputError(f"by={by!r}; use one of {', '.join(BY)}.")
    if by != "position" and key not in HEAD_KEYS:
        raise InputError(f"by={by!r} needs a per-head key ({', '.join(HEAD_KEYS)}); "
                         f"{key!r} has no heads. Use by='position'.")
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise InputError(f"direction={direction!r}; "
                         f"use 'denoising' (clean -> corrupted) or 'noising' "
                         f"(corrupted -> clean).")
    clean_ids, corrupted_ids = _aligned(model, clean, corrupted)
    score = make_metric(model, metric, target, contrast)
    names = {key, "resid_pre"}
    runs = {"clean": _textbook_run(model, clean_ids, names),
            "corrupted": _textbook_run(model, corrupted_ids, names)}
    m_clean, m_corrupted = score(runs["clean"].logits), score(runs["corrupted"].logits)
    normalized = metric == "logit_diff_normalized"
    if normalized and m_clean == m_corrupted:
        raise InputError("the clean and corrupted runs give the same logit difference, "
                         "so the normalised metric is undefined; "
                         "choose prompts whose predictions differ.")
    base, source = (runs["corrupted"], runs["clean"]) if direction == "denoising" else \
        (runs["clean"], runs["corrupted"])
    layers = checks.layers(layers, model.cfg.n_layers)
    n_seq = len(clean_ids)
    n_heads = getattr(model.cfg, HEAD_KEYS[key]) if key in HEAD_KEYS else 0
    cells = [(p, None) for p in range(n_seq)] if by == "position" else \
        [(None, h) for h in range(n_heads)] if by == "head" else \
        [(p, h) for h in range(n_heads) for p in range(n_seq)]

    values = np.empty((len(layers), len(cells)))
    for i, l in enumerate(layers):
        src = source[key, l]
        for lo in range(0, len(cells), BATCH):
            chunk = cells[lo:lo + BATCH]
            patch = _patcher(key, src, chunk)
            resid = np.broadcast_to(base["resid_pre", l],
                                    (len(chunk), *base["resid_pre", l].shape)).copy()
            ids = np.broadcast_to(base.ids, (len(chunk), n_seq))
            read = slice(-1, None) if score.reads_last else slice(None)
            _, logits = model._forward(ids, (), {(key, l): patch}, start=l, resid=resid, read=read)
            values[i, lo:lo + len(chunk)] = [score(lg) for lg in logits]
    if normalized:
        values = (values - m_corrupted) / (m_clean - m_corrupted)
        m_clean, m_corrupted = 1.0, 0.0
    strs = model.token_strings(base.ids)
    positions = [f"{p}:{s}" for p, s in enumerate(strs)]
    columns = positions if by == "position" else [f"H{h}" for h in range(n_heads)]
    if by == "head_position":
        values = values.reshape(len(layers), n_heads, n_seq)
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    return PatchingResult(values, key, by, direction, name, layers, columns, m_clean, m_corrupted,
                          positions)


def _items(value, name: str) -> list:
    """A list (tuple, array, tensor) of things, not one str or a scalar."""
    value = checks.as_numpy(value)
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise InputError(f"{name} must be a list, got {checks.shown(value)}.")
    return list(value)


def _ints(value, name: str) -> list[int]:
    """One int or a list of ints (positions, heads) -> [int]."""
    items = [value] if checks.is_int(value) else _items(value, name)
    if not all(checks.is_int(x) for x in items):
        raise InputError(f"{name} must be an int or a list of ints, got {checks.shown(value)}.")
    return [int(x) for x in items]


def _pair(value, name: str) -> tuple[int, int]:
    """A (layer, head) pair of ints."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(checks.is_int(x) for x in value)):
        raise InputError(f"{name} must be a (layer, head) pair of ints, "
                         f"got {checks.shown(value)}.")
    return int(value[0]), int(value[1])


def _patcher(key: str, src: np.ndarray, cells: list) -> Callable[[np.ndarray], np.ndarray]:
    """The intervention for one batch: run b of the batch takes cell b from ``src``.

    src layouts: [n_seq, ...] for stream keys, [n_seq, n_heads, d_head] for q/k/v/z, and
    [n_heads, n_seq, n_seq] for the pattern (head first)."""
    def patch(value: np.ndarray) -> np.ndarray:              # value: [batch, ...src.shape]
        value = value.copy()
        for b, (p, h) in enumerate(cells):
            if key == "pattern":
                index = (slice(None) if h is None else h, slice(None) if p is None else p)
            elif h is None:
                index = (p,)
            else:
                index = (slice(None) if p is None else p, h)
            value[(b, *index)] = src[index]
        return value
    return patch


# ----------------------------------------------------------------------------------------------
# Ablation and attention knockout: interventions to pass to model.run
# ----------------------------------------------------------------------------------------------

ABLATIONS = ("zero", "mean", "resample")
COMPONENTS = {"head": "z", "neuron": "mlp_post", "attn": "attn_out", "mlp": "mlp_out"}


def _references(reference) -> list:
    """The reference of a mean or resample ablation as a list: of texts, id sequences or traces
    (one text, one id sequence or one trace becomes a list of one)."""
    one = isinstance(reference, (str, Trace)) or (
        isinstance(reference, (list, tuple, np.ndarray)) and len(reference)
        and np.ndim(reference[0]) == 0 and not isinstance(reference[0], (str, Trace)))
    return [reference] if one else list(reference)


def ablation(model, component: str, layer: int, index: int | None = None, kind: str = "zero",
             reference=None) -> dict:
    """The interventions that ablate one component:
    ``model.run(ids, interventions=ablation(...))``.

    component: "head" (head ``index``'s z), "neuron" (mlp_post[..., index]), "attn" or "mlp" (the
    sublayer's whole output). kind: "zero"; "mean" (its mean over the ``reference`` texts or ids,
    all positions); "resample" (its value on ``reference``, one text of the same length).
    ``reference`` may also be traces already recorded (``model.run(text)``), which are read, not
    run again.
    """
    if not isinstance(component, str) or component not in COMPONENTS:
        raise InputError(f"component {component!r}; use one of {', '.join(COMPONENTS)}.")
    if not isinstance(kind, str) or kind not in ABLATIONS:
        raise InputError(f"kind {kind!r}; use one of {', '.join(ABLATIONS)}.")
    key = COMPONENTS[component]
    l = checks.layer(layer, model.cfg.n_layers)
    size = {"head": model.cfg.n_heads, "neuron": model.cfg.d_mlp}.get(component)
    if size is not None and (not checks.is_int(index) or not 0 <= index < size):
        raise InputError(f"{component} index {index!r} is out of range: layer {l} has {size} "
                         f"{component}s (0..{size - 1}).")
    part = (Ellipsis, index, slice(None)) if component == "head" else \
        (Ellipsis, index) if component == "neuron" else (Ellipsis,)
    if kind == "zero":
        fill = None
    else:
        if reference is None:
            raise InputError(f"kind={kind!r} needs reference= "
                             f"(texts or ids to take the {kind} from).")
        values = [r[key, l] if isinstance(r, Trace) else model.run(r, names={key})[key, l]
                  for r in _references(reference)]
        if kind == "mean":
            fill = np.mean(np.concatenate([v[part].reshape(len(v), -1) for v in values]), axis=0)
        else:
            if len(values) != 1:
                raise InputError("kind='resample' takes one reference text "
                                 "(its activations replace the run's).")
            fill = values[0][part]

    def ablate(value: np.ndarray) -> np.ndarray:
        value = value.copy()
        if fill is None:
            value[part] = 0
        elif kind == "mean":
            value[part] = fill.reshape(value[part].shape[-1:] if component != "neuron" else ())
        else:
            if value[part].shape != fill.shape:
                raise InputError(f"the resample reference has {fill.shape[0]} tokens, the run "
                                 f"{value[part].shape[0]}: give a reference of the same length.")
            value[part] = fill
        return value
    return {(key, l): ablate}


def knockout(model, layers, target: int, sources, heads=None) -> dict:
    """Attention knockout (Geva et al. 2023): in ``layers``, position ``target`` may not attend to
    ``sources``. The blocked scores are -inf before the softmax, which is the same as zeroing those
    pattern entries and renormalising the row; the target's edge to itself is never blocked, so
    knocking out every source leaves only the self edge (weight 1)."""
    n_heads = model.cfg.n_heads
    chosen = checks.layers(layers, model.cfg.n_layers)
    heads = list(range(n_heads)) if heads is None else _ints(heads, "heads")
    if any(not 0 <= h < n_heads for h in heads):
        raise InputError(f"heads {heads} out of range: "
                         f"the model has {n_heads} heads (0..{n_heads - 1}).")
    if not checks.is_int(target) or target < 0:
        raise InputError(f"target must be a position (an int >= 0), "
                         f"got {checks.shown(target)}.")
    sources = sorted(set(_ints(sources, "sources")) - {int(target)})
    if any(s > target or s < 0 for s in sources):
        raise InputError(f"sources {sources}: "
                         f"a position attends only to itself and earlier ones (0..{target}).")

    def cut(pattern: np.ndarray) -> np.ndarray:          # [..., n_heads, n_seq, n_seq]
        pattern = pattern.copy()
        rows = pattern[..., heads, target, :]
        rows[..., sources] = 0
        pattern[..., heads, target, :] = rows / rows.sum(-1, keepdims=True)
        return pattern
    return {("pattern", l): cut for l in chosen}


# ----------------------------------------------------------------------------------------------
# Direct against total effect
# ----------------------------------------------------------------------------------------------

@dataclass
class EffectsResult:
    """Per component: its direct effect (attribution: what it writes toward the metric) and its
    total effect (the metric's drop when it is ablated). Their difference is what the rest of the
    model does about its absence: downstream compensation ("self-repair", the Hydra effect)."""

    labels: list[str]
    direct: np.ndarray
    total: np.ndarray
    metric: str
    ablation: str
    clean: float


def direct_and_total_effects(model, text, target, contrast=None, kind: str = "mean",
                             reference=None, heads: bool = False, layers=None) -> EffectsResult:
    """For each layer's attention and MLP (and each head, with ``heads=True``): the direct effect on
    logit[target] - logit[contrast] (or logit[target]) at the last position, and the total effect
    of ablating it (``kind``: "zero", "mean" or "resample" over ``reference``); ``layers``: only
    these layers (default: all)."""
    from .attribution import layer_attribution

    ids = model.to_tokens(text) if isinstance(text, str) else model.check_ids(text)
    checks.flag(heads, "heads")
    chosen = checks.layers(layers, model.cfg.n_layers)
    t = model.to_single_token(target)
    c = None if contrast is None else model.to_single_token(contrast)

    def metric(logits: np.ndarray) -> float:
        return float(logits[-1, t]) - (0.0 if c is None else float(logits[-1, c]))

    fast, model.fast = model.fast, False
    try:
        trace = model.run(ids)
        clean = metric(trace.logits)
        if kind != "zero" and reference is not None:   # recorded once, read by every ablation
            reference = [r if isinstance(r, Trace) else
                         model.run(r, names={"z", "attn_out", "mlp_out"})
                         for r in _references(reference)]
        attr = layer_attribution(trace, target=t, contrast=c, by="layer")
        labels, direct, total = [], [], []
        for l in chosen:
            parts = [("attn", None, f"{l}_attn"), ("mlp", None, f"{l}_mlp")]
            if heads:
                parts += [("head", h, f"L{l}H{h}") for h in range(model.cfg.n_heads)]
                by_head = layer_attribution(trace, target=t, contrast=c, by="head", layer=l)
            for component, h, label in parts:
                labels.append(label)
                direct.append(attr[label] if h is None else by_head[label])
                ablated = model.run(ids, names=(),
                                    interventions=ablation(model, component, l, h, kind, reference))
                total.append(clean - metric(ablated.logits))
    finally:
        model.fast = fast
    return EffectsResult(labels, np.array(direct), np.array(total),
                         "logit" if c is None else "logit_diff", kind, clean)


# ----------------------------------------------------------------------------------------------
# Steering and path patching
# ----------------------------------------------------------------------------------------------

def steer(vector, scale: float = 1.0, positions=None) -> Callable[[np.ndarray], np.ndarray]:
    """An intervention that adds ``scale * vector`` to the stream (activation steering, Turner et
    al. 2023): ``model.run(ids, interventions={("resid_pre", 6): ml.steer(v, 4.0)})``.
    ``positions`` limits it to some positions (default: all)."""
    scale = checks.number(scale, "scale")
    try:
        v = np.asarray(checks.as_numpy(vector), dtype=np.float64)
    except (ValueError, TypeError):         # strings, a ragged list
        v = np.array(np.nan)
    if v.ndim != 1 or not np.isfinite(v).all():
        raise InputError(f"steer: vector must be a finite 1-D array of d_model numbers, "
                         f"got {checks.shown(vector)}.")
    if positions is not None:
        positions = np.asarray(_ints(positions, "positions"))

    def add(value: np.ndarray) -> np.ndarray:
        if value.shape[-1] != v.shape[0]:
            raise InputError(f"steer: the vector has {v.shape[0]} numbers, "
                             f"the value it is added to {value.shape[-1]} per position; "
                             f"steer a d_model-wide key such as resid_pre.")
        value = value.copy()
        where = (Ellipsis, slice(None) if positions is None else positions, slice(None))
        value[where] += (scale * v).astype(value.dtype)
        return value
    return add


def path_patching(model, clean, corrupted, sender: tuple[int, int],
                  receivers: list[tuple[int, int]], receiver_input: str = "q",
                  metric="logit_diff", target=None, contrast=None,
                  direction: str = "denoising") -> float:
    """The effect of one sender head on the metric through the receivers' ``receiver_input`` only
    (Wang et al. 2022). Denoising: on the corrupted run, (1) rerun with the sender head's z taken
    from the clean run and every other head frozen at its corrupted value, recording what the
    receivers read; (2) rerun the corrupted prompt with only the receivers' q, k or v replaced by
    those. Receivers are (layer, head), with KV heads for "k" and "v"; all after the sender's
    layer.
    Noising swaps the two runs. -> the metric after step 2."""
    if not isinstance(receiver_input, str) or receiver_input not in ("q", "k", "v"):
        raise InputError(f"receiver_input={receiver_input!r}; "
                         f"path patching reaches a receiver's q, k or v.")
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise InputError(f"direction={direction!r}; use 'denoising' or 'noising'.")
    clean_ids, corrupted_ids = _aligned(model, clean, corrupted)
    score = make_metric(model, metric if metric != "logit_diff_normalized" else "logit_diff",
                        target, contrast)
    base_ids, source_ids = ((corrupted_ids, clean_ids) if direction == "denoising"
                            else (clean_ids, corrupted_ids))
    base, source = _textbook_run(model, base_ids, {"z"}), _textbook_run(model, source_ids, {"z"})
    l_s, h_s = _pair(sender, "sender")
    receivers = [_pair(r, "receivers entry") for r in _items(receivers, "receivers")]
    n_heads = model.cfg.n_heads if receiver_input == "q" else model.cfg.n_kv_heads
    if not (0 <= l_s < model.cfg.n_layers and 0 <= h_s < model.cfg.n_heads):
        raise InputError(f"sender {sender} is out of range: layers 0..{model.cfg.n_layers - 1}, "
                         f"heads 0..{model.cfg.n_heads - 1}.")
    for l, h in receivers:
        if not (l_s < l < model.cfg.n_layers and 0 <= h < n_heads):
            raise InputError(f"receiver {(l, h)}: "
                             f"receivers sit in a later layer than the sender ({l_s}) and "
                             f"index {'query' if receiver_input == 'q' else 'KV'} "
                             f"heads 0..{n_heads - 1}.")

    def frozen(l: int) -> Callable[[np.ndarray], np.ndarray]:
        # every head as in the base run, the sender from the source
        def fix(z: np.ndarray) -> np.ndarray:
            z = base["z", l].copy()
            if l == l_s:
                z[:, h_s] = source["z", l_s][:, h_s]
            return z
        return fix
    step1 = model.run(base_ids, names={receiver_input},
                      interventions={("z", l): frozen(l) for l in range(model.cfg.n_layers)})

    def reads(l: int, heads: list[int]) -> Callable[[np.ndarray], np.ndarray]:
        def patch(x: np.ndarray) -> np.ndarray:
            x = x.copy()
            x[:, heads] = step1[receiver_input, l][:, heads]
            return x
        return patch
    by_layer: dict[int, list[int]] = {}
    for l, h in receivers:
        by_layer.setdefault(l, []).append(h)
    step2 = model.run(base_ids, names=(),
                      interventions={(receiver_input, l): reads(l, hs)
                                     for l, hs in by_layer.items()})
    value = score(step2.logits)
    if metric == "logit_diff_normalized":
        m_clean = score(_textbook_run(model, clean_ids, ()).logits)
        m_corr = score(_textbook_run(model, corrupted_ids, ()).logits)
        value = (value - m_corr) / (m_clean - m_corr)
    return value
