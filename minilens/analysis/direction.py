"""The direction lens: which tokens a d_model direction promotes and suppresses.

Any vector written to the residual stream can be read through the unembedding: an SAE feature's
decoder row, a neuron's output weights (a row of W_out), a head's OV output. This is the seed's
second resource, "Understanding SAE features with the Logit Lens" (LessWrong, 2024).

scores = v' W_U, where v' is v as the final norm would pass it (``apply_norm_weight=True``, the
default): centred for LayerNorm, then multiplied by gamma. The norm's divisor is one positive
number per position, so it changes the scale of the scores, not their order, and is left out.
The unembedding bias b_U is left out too: it does not depend on the direction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import checks
from ..errors import CheckpointError, CheckpointNotFoundError, InputError
from ..loading.safetensors import open_tensor, read_header, widen

if TYPE_CHECKING:
    from ..model import Model


@dataclass
class DirectionLens:
    """The k tokens a direction promotes most and the k it suppresses most."""

    promoted_ids: np.ndarray        # [k] largest scores first
    promoted_scores: np.ndarray     # [k]
    suppressed_ids: np.ndarray      # [k] most negative first
    suppressed_scores: np.ndarray   # [k]
    promoted: list                  # [k] token strings (ids as "#id" without a tokenizer)
    suppressed: list
    feature: int | None = None      # the SAE feature index, for sae_lens

    def to_dict(self) -> dict:
        return dict(feature=self.feature, promoted=self.promoted,
                    promoted_ids=self.promoted_ids.tolist(),
                    promoted_scores=self.promoted_scores.tolist(), suppressed=self.suppressed,
                    suppressed_ids=self.suppressed_ids.tolist(),
                    suppressed_scores=self.suppressed_scores.tolist())

    def __repr__(self) -> str:
        name = "DirectionLens" + ("" if self.feature is None else f"(feature {self.feature})")
        up = ", ".join(f"{t!r} {s:+.3f}" for t, s in zip(self.promoted, self.promoted_scores))
        down = ", ".join(f"{t!r} {s:+.3f}" for t, s in zip(self.suppressed, self.suppressed_scores))
        return f"{name}\n  promotes:   {up}\n  suppresses: {down}"


def direction_scores(model: "Model", vectors: np.ndarray,
                     apply_norm_weight: bool = True) -> np.ndarray:
    """v' W_U for each direction.  [n, d_model] -> [n, d_vocab]"""
    g = model.params
    v = vectors.astype(g.W_U.dtype)
    if apply_norm_weight:
        if model.cfg.norm == "layernorm":
            v = v - v.mean(-1, keepdims=True)  # LayerNorm removes the mean of whatever it reads
        v = v * g.lnf_w
    return v @ g.W_U


def _lens_rows(model: "Model", vectors: np.ndarray, k: int, apply_norm_weight: bool,
               features=None) -> list:
    scores = direction_scores(model, vectors, apply_norm_weight)                   # [n, d_vocab]
    k = min(k, scores.shape[1])
    out = []
    for i, row in enumerate(scores):
        up = np.argpartition(-row, k - 1)[:k]
        up = up[np.argsort(-row[up], kind="stable")]
        down = np.argpartition(row, k - 1)[:k]
        down = down[np.argsort(row[down], kind="stable")]
        out.append(DirectionLens(up, row[up], down, row[down],
                                 model.token_strings(up), model.token_strings(down),
                                 None if features is None else int(features[i])))
    return out


def direction_lens(model: "Model", vector, k: int = 10,
                   apply_norm_weight: bool = True) -> DirectionLens:
    """The tokens a d_model direction promotes and suppresses most (see the module docstring).
    ``vector``: a list, array or torch tensor of d_model numbers; ``k`` >= 1 (capped at
    d_vocab)."""
    k = checks.count(k, "k")
    checks.flag(apply_norm_weight, "apply_norm_weight")
    v = checks.vector(vector, "the direction", model.cfg.d_model)
    return _lens_rows(model, v[None], k, apply_norm_weight)[0]


def sae_lens(model: "Model", path: str | os.PathLike, features=None, k: int = 10,
             apply_norm_weight: bool = True) -> list[DirectionLens]:
    """Read SAE decoder rows (``W_dec`` [d_sae, d_model], the SAELens / Gemma Scope layout) from a
    safetensors file, memory-mapped, and lens the chosen ``features`` (all when None). Rows
    holding NaN or inf are refused."""
    k = checks.count(k, "k")
    checks.flag(apply_norm_weight, "apply_norm_weight")
    path = Path(checks.path(path, "path"))
    if path.is_dir():
        path = (path / "sae_weights.safetensors" if (path / "sae_weights.safetensors").is_file()
                else path / "params.safetensors")
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{path}: no such safetensors file. Give the SAE's .safetensors file "
            f"(SAELens saves sae_weights.safetensors, Gemma Scope params.safetensors).")
    infos = read_header(path)
    if "W_dec" not in infos:
        raise CheckpointError(
            f"{path} has no tensor 'W_dec' (it holds {', '.join(sorted(infos)[:8])}). "
            f"sae_lens reads the SAELens / Gemma Scope layout, W_dec [d_sae, d_model].")
    info = infos["W_dec"]
    if len(info.shape) != 2 or info.shape[1] != model.cfg.d_model:
        raise CheckpointError(
            f"{path}: W_dec has shape {list(info.shape)}, but this model needs "
            f"[d_sae, {model.cfg.d_model}]: "
            f"the SAE was trained on another model (or is transposed).")
    d_sae = info.shape[0]
    if features is None:
        idx = np.arange(d_sae)
    else:
        try:
            idx = np.atleast_1d(np.asarray(checks.as_numpy(features)))
        except (ValueError, TypeError):         # a ragged list
            idx = np.array([None])
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or idx.size == 0:
            raise InputError(f"features must be an int or a list of ints, "
                             f"got {checks.shown(features)}.")
        if ((idx < 0) | (idx >= d_sae)).any():
            raise InputError(f"feature {idx[(idx < 0) | (idx >= d_sae)][0]} is out of range: "
                             f"this SAE has {d_sae} features, so use 0..{d_sae - 1}.")
    W_dec = open_tensor(info, {})  # memory-mapped, read-only
    out: list[DirectionLens] = []
    for start in range(0, len(idx), 256):                                          # bounded memory
        chosen = idx[start:start + 256]
        rows = widen(W_dec[chosen], info.dtype, model.params.W_U.dtype)            # [n, d_model]
        finite = np.isfinite(rows).all(-1)
        if not finite.all():       # NaN scores sort anywhere: refused, as direction_lens does
            bad = int(chosen[np.argmin(finite)])
            raise CheckpointError(f"{path}: W_dec row {bad} (SAE feature {bad}) holds NaN or inf "
                                  f"values: the SAE file is corrupt, or its training diverged.")
        out += _lens_rows(model, rows, k, apply_norm_weight, chosen)
    return out
