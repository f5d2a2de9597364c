"""The equations of the forward pass, one short function each.

Every function keeps its input's dtype. These are the textbook forms that forward.py reads like a
paper. The fast forward pass (fast/forward.py) uses in-place versions of some of them
(fast/kernels.py), tested equal to these.
"""

from __future__ import annotations

import math

import numpy as np

from .config import RopeConfig


def linear(x: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """x @ W + b, with weights stored [d_in, d_out]; an absent bias is None.

    [..., d_in] -> [..., d_out]. The rows are flattened first: on a [batch, n_seq, d_in] x, numpy's
    matmul would run one small product per batch entry instead of one large one.
    """
    y = (x.reshape(-1, x.shape[-1]) @ W).reshape(*x.shape[:-1], W.shape[-1])
    return y if b is None else y + b


def rms(x: np.ndarray, eps: float) -> np.ndarray:
    """s = sqrt(mean(x^2) + eps): the norms' divisor, which attribution freezes.

    [..., d_model] -> [..., 1]
    """
    return np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
               eps: float) -> tuple[np.ndarray, np.ndarray]:
    """N(x) = (x - mean(x)) / s * gamma + beta, s = sqrt(var(x) + eps).

    -> [..., d_model], s [..., 1]
    """
    centred = x - x.mean(-1, keepdims=True)
    s = rms(centred, eps)                       # the variance is the mean square of the centred x
    return centred / s * gamma + beta, s


def rms_norm(x: np.ndarray, gamma: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """N(x) = x / s * gamma, s = sqrt(mean(x^2) + eps).  -> [..., d_model], s [..., 1]"""
    s = rms(x, eps)
    return x / s * gamma, s


def gelu_new(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh approximation of GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    c = x.dtype.type(math.sqrt(2.0 / math.pi))
    return x.dtype.type(0.5) * x * (1 + np.tanh(c * (x + x.dtype.type(0.044715) * x ** 3)))


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, vectorised, to float64 accuracy (numpy has none).

    [...] -> [...], x's dtype

    The algorithm of CPython's own fallback erf (Modules/mathmodule.c): for |x| < 1.5 the power
    series erf(x) = 2x/sqrt(pi) exp(-x^2) sum_k (2x^2)^k / (1*3*...*(2k+1)) (25 terms, Horner form);
    beyond it, the continued fraction for erfc(|x|) (50 terms), which is 0 in float64 past |x| = 30.
    Both are evaluated in float64 on clipped inputs and the right one picked per element, so no
    branch overflows. tests/test_families.py checks it against math.erf on a dense grid.
    """
    a = np.abs(np.asarray(x, dtype=np.float64))
    # Power series, for |x| < 1.5.
    s = np.minimum(a, 1.5)
    s2 = s * s
    acc = np.zeros_like(s)
    fk = 25 + 0.5
    for _ in range(25):
        acc = 2.0 + s2 * acc / fk
        fk -= 1.0
    series = acc * s * np.exp(-s2) / math.sqrt(math.pi)
    # Continued fraction for erfc, for 1.5 <= |x| < 30.
    c = np.clip(a, 1.5, 30.0)
    c2 = c * c
    num, num_last, den, den_last = np.ones_like(c), np.zeros_like(c), 0.5 + c2, np.ones_like(c)
    ak, dak = 0.0, 0.5
    for _ in range(50):
        ak += dak
        dak += 2.0
        b = dak + c2
        num, num_last = b * num - ak * num_last, num
        den, den_last = b * den - ak * den_last, den
    erfc = np.where(a >= 30.0, 0.0, num / den * c * np.exp(-c2) / math.sqrt(math.pi))
    magnitude = np.where(a < 1.5, series, 1.0 - erfc)
    return (np.sign(x) * magnitude).astype(np.result_type(x, np.float32), copy=False)


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + erf(x * x.dtype.type(1.0 / math.sqrt(2.0))))


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU (swish): x * sigmoid(x) = x / (1 + exp(-x))."""
    return x / (1.0 + np.exp(-x))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


ACTIVATIONS = {"gelu_new": gelu_new, "gelu_tanh": gelu_new, "gelu_pytorch_tanh": gelu_new,
               "gelu": gelu, "silu": silu, "swish": silu, "relu": relu}


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """Soft-capping (Gemma 2): cap * tanh(x / cap), a smooth clamp of x to (-cap, cap)."""
    c = x.dtype.type(cap)
    return c * np.tanh(x / c)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)); subtracting the max keeps exp from overflowing."""
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis, keepdims=True))


def causal_mask(n_seq: int, window: int | None, dtype) -> np.ndarray:
    """0 where query q may attend to key k, -inf where it may not.  -> [n_seq(q), n_seq(k)]

    Causal: never a key after the query. With a sliding window, only the ``window`` keys
    q - window + 1 .. q (transformers' sliding_window_overlay: kv > q - window). -inf, not a
    large negative number: exp(-inf) is exactly 0, and the mask has the scores' dtype.
    """
    q, k = np.arange(n_seq)[:, None], np.arange(n_seq)[None, :]
    hidden = (k > q) | (k <= q - window) if window is not None else k > q
    return np.where(hidden, -np.inf, 0).astype(dtype)


def gqa_repeat(x: np.ndarray, group: int) -> np.ndarray:
    """Grouped-query attention: query head h reads kv head h // group
    (repeat-interleave, not modulo).

    [..., n_kv_heads, d_head] -> [..., n_heads, d_head]
    """
    return np.repeat(x, group, axis=-2) if group > 1 else x


def rope_inv_freq(rope: RopeConfig, n_seq: int) -> np.ndarray:
    """The rotary frequencies theta^(-2i/d), rescaled by the config's rope type.

    -> [rotary_dim // 2] float64

    Computed in float64 whatever the compute dtype: the tables are cast once, afterwards.
    """
    dim = rope.rotary_dim
    theta = rope.theta
    if (rope.kind == "dynamic" and rope.max_position_embeddings
            and n_seq > rope.max_position_embeddings):
        # Dynamic NTK: grow the base once the sequence is longer than the trained context.
        ratio = rope.factor * n_seq / rope.max_position_embeddings - (rope.factor - 1)
        theta = theta * ratio ** (dim / (dim - 2))
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if rope.kind == "linear":
        inv_freq = inv_freq / rope.factor          # positions are stretched by the factor
    elif rope.kind == "llama3":
        inv_freq = llama3_inv_freq(inv_freq, rope)
    elif rope.kind == "factors":
        # llama.cpp stores Llama 3's scaling as one divisor per frequency (GGUF's rope_freqs tensor)
        inv_freq = inv_freq / np.asarray(rope.freq_factors, dtype=np.float64)
    return inv_freq


def llama3_inv_freq(inv_freq: np.ndarray, rope: RopeConfig) -> np.ndarray:
    """Llama 3.1's frequency-dependent scaling.

    Wavelengths longer than original_len / low_freq_factor are divided by the factor; shorter than
    original_len / high_freq_factor they are kept; the band in between (inclusive at both edges)
    interpolates smoothly between the two.
    """
    original_len = rope.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original_len / rope.low_freq_factor
    high_freq_wavelen = original_len / rope.high_freq_factor
    smooth = ((original_len / wavelen - rope.low_freq_factor)
              / (rope.high_freq_factor - rope.low_freq_factor))
    middle = (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(in_band, middle, scaled)


def rope_tables(rope: RopeConfig, n_seq: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * frequency, in the half-split layout.  -> 2 x [n_seq, rotary_dim]"""
    angles = np.outer(np.arange(n_seq, dtype=np.float64),
                      rope_inv_freq(rope, n_seq))           # [n_seq, rotary_dim // 2]
    angles = np.concatenate([angles, angles], axis=-1)      # [n_seq, rotary_dim]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """[x1, x2] -> [-x2, x1], halves along the last axis: the half-split ("rotate_half") RoPE
    layout, in which dim i pairs with dim i + rotary_dim/2 (Meta's original code pairs neighbours
    2i, 2i+1)."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate each head's first rotary_dim dims by its position; the rest pass unchanged.

    [..., n_seq, n_heads, d_head] -> same; cos, sin [n_seq, rotary_dim]
    """
    r = cos.shape[-1]
    cos, sin = cos[:, None, :], sin[:, None, :]                       # broadcast over heads
    rotated = x[..., :r] * cos + rotate_half(x[..., :r]) * sin
    return np.concatenate([rotated, x[..., r:]], axis=-1)
