"""The logit lens: read each layer's residual stream through the final norm and the unembedding.

nostalgebraist (2020), "interpreting GPT: the logit lens". The lens logits at row r are
N(x_r) W_U + b_U, where x_r is the residual stream at that point and N is the final norm,
*recomputed* on x_r. TransformerLens froze N's divisor at its value on the final residual until
its issue #1076 (https://github.com/TransformerLensOrg/TransformerLens/issues/1076); a frozen
divisor gives every early layer the wrong temperature, so minilens never does that here.

Memory stays bounded: logits are computed for a chunk of positions across all rows at a time
(at most CHUNK_ELEMENTS numbers), reduced to statistics, and dropped. No [rows, n_seq, d_vocab]
array is ever built; ``LensResult.logits(row)`` recomputes one row on demand.

``translators=`` (the tuned lens, analysis/tuned_lens.py; Belrose et al. 2023) reads row
``"{l}_pre"`` as N(x_l A_l + b_l) W_U + b_U instead: an affine map per layer, applied before the
final norm. ``final_post`` stays the model's own logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import checks
from ..errors import InputError
from ..fast import kernels, workers
from ..forward import final_norm, unembed
from ..trace import check_trace

if TYPE_CHECKING:
    from ..model import Model
    from ..trace import Trace

# How many logits one chunk may hold: 32M numbers, 128 MB in float32. The logits of all the
# workers' chunks together take at most 2 x CHUNK_ELEMENTS numbers (each worker one buffer,
# allocated once and reused by every chunk), plus the exp of one small piece of positions per
# worker, so the peak extra memory is about 2 x 128 MB whatever n_seq is.
# Each chunk's GEMM streams all of W_U once, so larger chunks read W_U less often: 2^25 beat 2^24
# on SmolLM2 and on GPT-2-small in paired rounds (paired.py lens-chunk; tests/benchmarks/README.md).
# For the same reason, chunks split among more workers would read W_U more often.
CHUNK_ELEMENTS = 1 << 25

# The statistics are element-wise numpy passes (max, exp, sums), which run on one core, while the
# unembedding GEMM uses every BLAS thread. So the positions, which are independent, are shared out
# among fast/workers.py's workers (one per core), each doing its positions' GEMMs and statistics
# with BLAS at one thread. WORKERS = None takes workers.n_workers(); tests set it. Within a worker,
# the statistics run on pieces of a few positions (all rows) of at most STAT_ROWS rows of logits in
# all: 2 positions of GPT-2-small's 13 rows, 1 of SmolLM2's 31 (each about 2% faster than the
# other choice on that model; tests/benchmarks/README.md, 2026-12-07).
WORKERS: int | None = None
STAT_ROWS = 32

# exp(-87) = 1.6e-38, just above float32's smallest normal number (1.2e-38)
EXP_FLOOR = -87.0


# ------------------------------------------------------------------------------------------
# The math
# ------------------------------------------------------------------------------------------

def lens_logits(model: "Model", resid: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """N(x) W_U + b_U with the final norm recomputed on x: the model's own final_norm and unembed
    (forward.py). ``out``, when given, receives the logits: the chunked statistics reuse one buffer
    for every chunk (fresh 32 MB arrays cost page faults on every chunk; issue 6).
    [..., d_model] -> [..., d_vocab]"""
    g, cfg = model.params, model.cfg
    normalized = final_norm(resid, g, cfg)
    if out is None:
        return unembed(normalized, g, cfg)
    return kernels.unembed(normalized, g, cfg, out)


def top_k_by_group_maxima(logits: np.ndarray,
                          k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k largest logits of each row, exactly, plus each row's max.

    [..., d_vocab] -> [..., k] ids, [..., k], [...]

    Why not ``np.argpartition`` over the whole vocabulary: it copies and shuffles every row, and
    costs several times the unembedding itself. Instead, split the vocabulary into groups and take
    each group's max. The k largest values all lie in the k groups with the largest maxima: a group
    outside them has a max no larger than k other groups' maxima, each of which is an actual logit
    at least as large. So only k * G candidates are partitioned. The group maxima also give each
    row's max, which a stable softmax needs anyway.

    Group g holds the G columns g, g + n_groups, g + 2 n_groups, ... (an interleaved split, not
    contiguous runs): then the group maxima are the element-wise max of G contiguous slices of the
    row, which numpy computes at memory speed; a max over each contiguous run of G was 3x slower
    (issue 6). The columns past G * n_groups form one short extra group.
    """
    *lead, d_vocab = logits.shape
    k = min(k, d_vocab)
    G = 32                                      # group size: k * G = 160 candidates for top-5
    n_groups = d_vocab // G
    if k * G >= d_vocab or k >= n_groups:       # small vocabulary: partition it all
        cols = np.broadcast_to(np.arange(d_vocab), logits.shape)
        cand, row_max = logits, logits.max(-1)
    else:
        covered = G * n_groups
        group_max = logits[..., :covered].reshape(*lead, G, n_groups).max(-2)  # [..., n_groups]
        if covered < d_vocab:                   # the short extra group: columns covered..
            group_max = np.concatenate([group_max, logits[..., covered:].max(-1, keepdims=True)],
                                       axis=-1)
        row_max = group_max.max(-1)                                 # [...]
        groups = np.argpartition(-group_max, k - 1, axis=-1)[..., :k, None]    # [..., k, 1]
        i = np.arange(G)
        # [..., k, G] vocabulary ids
        cols = np.where(groups == n_groups, covered + i, groups + n_groups * i)
        cols = cols.reshape(*lead, k * G)
        outside = cols >= d_vocab               # only the short extra group overhangs
        cols = np.minimum(cols, d_vocab - 1)
        cand = np.take_along_axis(logits, cols, axis=-1)            # [..., k * G]
        cand[outside] = -np.inf
    best = np.argpartition(-cand, k - 1, axis=-1)[..., :k] if k < cand.shape[-1] else \
        np.broadcast_to(np.arange(k), (*lead, k))
    values = np.take_along_axis(cand, best, axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")            # the k winners, largest first
    ids = np.take_along_axis(np.take_along_axis(cols, best, axis=-1), order, axis=-1)
    return ids, np.take_along_axis(values, order, axis=-1), row_max


def position_statistics(logits: np.ndarray, target: np.ndarray, k: int,
                        exp_out: np.ndarray) -> dict:
    """Every lens statistic for a few positions, over all rows; the last row is final_post.

    logits [R, n_pos, d_vocab], target [n_pos]
    -> top_ids, top_probs [R, n_pos, k]; the rest [R, n_pos]

    Overwrites ``logits`` with the shifted logits (logits - row max) to save a buffer, and
    ``exp_out`` (same shape) receives exp(shifted). log p = shifted - log Z, Z = sum(exp(shifted)).
    """
    top_ids, top_logits, row_max = top_k_by_group_maxima(logits, k)
    target_logit = np.take_along_axis(
        logits, np.broadcast_to(target[:, None], (len(logits), len(target), 1)),
        axis=-1)[..., 0]                                            # [R, n_pos]
    rank = np.empty(target_logit.shape, dtype=np.int64)  # tokens strictly above the target
    # row by row: count_nonzero over a whole row is 4x faster than with axis=-1
    for i in np.ndindex(rank.shape):
        rank[i] = np.count_nonzero(logits[i] > target_logit[i])
    shifted = logits
    shifted -= row_max[..., None]                                   # <= 0, so exp cannot overflow
    # exp of the shifted logits floored at EXP_FLOOR: below it float32's exp is subnormal or 0,
    # and subnormals slow every later pass over e. The floor adds at most d_vocab * 1.6e-38 to
    # Z >= 1; the sums with shifted (entropy, KL) take the unfloored logits.
    e = np.exp(np.maximum(shifted, EXP_FLOOR, out=exp_out), out=exp_out)
    Z = e.sum(-1)
    log_Z = np.log(Z)                                               # [R, n_pos]
    p_final = e[-1] / Z[-1][:, None]                                # [n_pos, d_vocab]
    # E_p[shifted] of each row's own p (for the entropy) and of the final row's p (for the KL):
    E_self = np.einsum("rjv,rjv->rj", e, shifted) / Z
    E_final = np.einsum("rjv,jv->rj", shifted, p_final)
    return dict(top_ids=top_ids, top_probs=np.exp(top_logits - (row_max + log_Z)[..., None]),
                target_logit=target_logit, target_prob=np.exp(target_logit - row_max - log_Z),
                target_rank=rank,
                # H = -sum p log p = log Z - E_p[shifted]
                entropy=log_Z - E_self,
                # KL(p_f || p_r) = sum p_f (log p_f - log p_r)
                #                = E_f[shifted_f] - E_f[shifted_r] - log Z_f + log Z_r
                kl_to_final=E_final[-1] - E_final - log_Z[-1] + log_Z)


# ------------------------------------------------------------------------------------------
# The result
# ------------------------------------------------------------------------------------------

@dataclass
class LensResult:
    """The logit lens over rows (points in the stream) and positions. Arrays are
    [row, position](, k)."""

    labels: np.ndarray          # [rows] str: "0_pre", ..., "final_post" (and "{l}_mid")
    positions: np.ndarray       # [n_pos] int: the sequence positions read
    top_ids: np.ndarray         # [rows, n_pos, k] int
    top_probs: np.ndarray       # [rows, n_pos, k]
    target_ids: np.ndarray      # [n_pos] int: the token tracked at each position
    target_logit: np.ndarray    # [rows, n_pos]
    target_prob: np.ndarray     # [rows, n_pos]
    target_rank: np.ndarray     # [rows, n_pos] int: how many tokens have a strictly higher logit
                                # (0 = top)
    entropy: np.ndarray         # [rows, n_pos] nats
    kl_to_final: np.ndarray     # [rows, n_pos] nats: KL(p_final || p_row)
    trace: "Trace" = field(repr=False)
    _keys: tuple = field(repr=False, default=())
    translators: object = field(repr=False, default=None)   # tuned_lens.Translators, or None

    def row_index(self, row: int | str) -> int:
        """A row given by label ("3_pre") or index (negative allowed)."""
        labels = list(self.labels)
        if isinstance(row, str):
            if row not in labels:
                raise InputError(f"no lens row {row!r}; rows are {', '.join(labels)}.")
            return labels.index(row)
        if (isinstance(row, (int, np.integer)) and not isinstance(row, bool)
                and -len(labels) <= row < len(labels)):
            return int(row) % len(labels)
        raise InputError(f"row {row!r} is out of range: "
                         f"give a label ({str(labels[0])!r}...) or 0..{len(labels) - 1}.")

    def logits(self, row: int | str) -> np.ndarray:
        """One row's lens logits, recomputed.  -> [n_pos, d_vocab]"""
        key = self._keys[self.row_index(row)]
        if key == "resid_final":  # final_post is the model's own logits, exactly (see run_lens)
            return self.trace.logits[self.positions].copy()
        resid = translated(self.translators, key, self.trace[key][self.positions])
        return lens_logits(self.trace.model, resid)

    def to_dict(self) -> dict:
        return {name: getattr(self, name).tolist() for name in
                ("labels", "positions", "top_ids", "top_probs", "target_ids", "target_logit",
                 "target_prob", "target_rank", "entropy", "kl_to_final")}


# ------------------------------------------------------------------------------------------
# The lens
# ------------------------------------------------------------------------------------------

def lens_rows(trace: "Trace", incl_mid: bool = False) -> list[tuple[str, object]]:
    """(label, trace key) of every lens row, in stream order."""
    rows: list[tuple[str, object]] = []
    for l in range(trace.n_layers):
        rows.append((f"{l}_pre", ("resid_pre", l)))
        if incl_mid:
            rows.append((f"{l}_mid", ("resid_mid", l)))
    rows.append(("final_post", "resid_final"))
    return rows


def check_positions(trace: "Trace", positions) -> np.ndarray:
    """None (all), an int, or ints (negative allowed) -> checked non-negative positions [n_pos]."""
    n_seq = trace.n_seq
    if positions is None:
        return np.arange(n_seq)
    arr = np.atleast_1d(np.asarray(positions))
    if arr.size == 0 or arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InputError(f"positions must be an int or a list of ints, got {positions!r}.")
    if ((arr < -n_seq) | (arr >= n_seq)).any():
        raise InputError(f"positions {arr.tolist()} out of range: the sequence has {n_seq} tokens, "
                         f"so use 0..{n_seq - 1} (or -{n_seq}..-1).")
    return arr.astype(np.int64) % n_seq


def resolve_targets(trace: "Trace", target, positions: np.ndarray) -> np.ndarray:
    """The token tracked at each position.  -> [n_pos] int

    None: the true next token where it is known, and the final top-1 at the last position.
    """
    model = trace.model
    if target is None:
        nxt = np.append(trace.ids[1:], int(trace.logits[-1].argmax()))   # [n_seq]
        return nxt[positions]
    target = checks.as_numpy(target)                                # a torch tensor of ids
    if isinstance(target, (str, int, np.integer)) or np.ndim(target) == 0:
        return np.full(len(positions), model.to_single_token(target), dtype=np.int64)
    arr = np.asarray(target)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InputError(f"target must be a token string, an id, or a 1-D array of ids, "
                         f"got {target!r}.")
    if len(arr) == trace.n_seq and len(positions) != trace.n_seq:
        arr = arr[positions]                                        # one id per sequence position
    if len(arr) != len(positions):
        raise InputError(f"target has {len(arr)} ids but the lens reads {len(positions)} "
                         f"positions: give one id per position.")
    for t in arr:
        model.to_single_token(int(t))                   # range check with a clear message
    return arr.astype(np.int64)


def translated(translators, key, resid: np.ndarray) -> np.ndarray:
    """A row's stream as the lens reads it: x_l A_l + b_l for ``("resid_pre", l)`` when there
    are translators, else x itself.  [n_pos, d_model] -> [n_pos, d_model]"""
    if translators is None or not (isinstance(key, tuple) and key[0] == "resid_pre"):
        return resid
    return translators.translate(key[1], resid)


def check_translators(trace: "Trace", translators, incl_mid: bool) -> None:
    """Translators fit for this model's shape, and only for the rows they were fit for."""
    cfg = trace.model.cfg
    shape = (getattr(translators, "n_layers", None), getattr(translators, "d_model", None))
    if not callable(getattr(translators, "translate", None)):
        raise InputError(f"translators must be a tuned_lens.Translators (from fit_affine_lens, "
                         f"refine_lens or load_translators), got {type(translators).__name__}.")
    if shape != (cfg.n_layers, cfg.d_model):
        raise InputError(f"these translators are for {shape[0]} layers of d_model {shape[1]}, "
                         f"but the traced model has {cfg.n_layers} layers of d_model "
                         f"{cfg.d_model}: fit (or load) translators for this model.")
    if incl_mid:
        raise InputError("translators are fit for the '{l}_pre' rows only; "
                         "use incl_mid=False with translators.")


def logit_lens(trace: "Trace", target=None, top_k: int = 5, positions=None,
               incl_mid: bool = False, translators=None) -> LensResult:
    """The logit lens on every row of the recorded stream.  See the module docstring and
    LensResult. ``translators``: read each ``"{l}_pre"`` row through its affine translator
    first (the tuned lens; see analysis/tuned_lens.py)."""
    check_trace(trace, "logit_lens")
    top_k = checks.count(top_k, "top_k")
    checks.flag(incl_mid, "incl_mid")
    pos = check_positions(trace, positions)
    targets = resolve_targets(trace, target, pos)
    rows = lens_rows(trace, incl_mid)
    for _, key in rows:
        if key not in trace:
            raise InputError(f"the lens needs {key!r}, which this trace did not record. "
                             f"Run model.run(ids) without names=..., "
                             f"or include 'resid_pre', 'resid_mid' and 'resid_final' in names.")
    if translators is not None:
        check_translators(trace, translators, incl_mid)
    return run_lens(trace, rows, pos, targets, top_k, translators)


def run_lens(trace: "Trace", rows: list, pos: np.ndarray, targets: np.ndarray,
             top_k: int, translators=None) -> LensResult:
    """The lens on the given rows (the last must be final_post).  Chunked over positions."""
    model = trace.model
    d_vocab, d_model = model.cfg.d_vocab, model.cfg.d_model
    R, n_pos, k = len(rows), len(pos), min(top_k, d_vocab)
    out = {name: np.empty((R, n_pos), dtype=dt) for name, dt in
           [("target_logit", trace.logits.dtype), ("target_prob", trace.logits.dtype),
            ("target_rank", np.int64), ("entropy", trace.logits.dtype),
            ("kl_to_final", trace.logits.dtype)]}
    top_ids = np.empty((R, n_pos, k), dtype=np.int64)
    top_probs = np.empty((R, n_pos, k), dtype=trace.logits.dtype)
    resid = [trace[key] for _, key in rows]             # R x [n_seq, d_model], no copies
    results = dict(out, top_ids=top_ids, top_probs=top_probs)      # each [R, n_pos](, k)
    n_workers = max(1, min(WORKERS or workers.n_workers(), n_pos))
    # Each worker one logits buffer for its chunks (CHUNK_ELEMENTS numbers, or less with more
    # than two workers) and one exp buffer for a piece of `per_piece` positions.
    chunk = max(1, 2 * CHUNK_ELEMENTS // (max(2, n_workers) * R * d_vocab))
    per_piece = max(1, STAT_ROWS // R)
    shares = workers.shares(n_pos, n_workers)

    def work(w: int) -> None:
        """The lens at worker w's share of the positions, a chunk at a time."""
        share = shares[w]
        logits_buf = np.empty((R * min(chunk, share.stop - share.start), d_vocab),
                              dtype=trace.logits.dtype)
        exp_buf = np.empty((R, per_piece, d_vocab), dtype=trace.logits.dtype)
        for start in range(share.start, share.stop, chunk):
            p = pos[start:min(start + chunk, share.stop)]
            c = len(p)
            stacked = np.stack([translated(translators, key, x[p])  # [R - 1, c, d_model]
                                for (_, key), x in zip(rows[:-1], resid[:-1])])
            # One GEMM for all rows but the last. The last row, final_post, is N(x_L) W_U + b_U:
            # the model's own logits, taken as they are so that it equals trace.logits bit for bit
            # (a GEMM over a different number of rows may round differently in the last place).
            logits = logits_buf[:R * c]                             # [R * c, d_vocab]
            lens_logits(model, stacked.reshape((R - 1) * c, d_model), out=logits[:(R - 1) * c])
            # (mode="clip": with the default "raise", take buffers a whole copy of its output)
            np.take(trace.logits, p, axis=0, out=logits[(R - 1) * c:], mode="clip")
            logits3 = logits.reshape(R, c, d_vocab)
            # The statistics make several passes over the logits. Done a few positions at a time,
            # each piece (all rows) stays in cache between passes.
            for a in range(0, c, per_piece):
                at = slice(start + a, start + min(a + per_piece, c))
                piece = logits3[:, a:a + per_piece]
                stats = position_statistics(piece, targets[at], k,
                                            exp_buf[:, :piece.shape[1]])
                for name, value in stats.items():
                    results[name][:, at] = value

    workers.split(work, n_workers)
    return LensResult(labels=np.array([label for label, _ in rows]), positions=pos, top_ids=top_ids,
                      top_probs=top_probs, target_ids=targets, trace=trace,
                      _keys=tuple(key for _, key in rows), translators=translators, **out)
