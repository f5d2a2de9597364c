"""Pure functions, one per equation. Every function keeps its input's dtype."""

from __future__ import annotations

import math

import numpy as np

from .config import RopeConfig


def rms_norm_scale(x: np.ndarray, eps: float) -> np.ndarray:
    """s = sqrt(mean(x^2) + eps), the RMSNorm divisor (the LayerNorm one on centred x).  [..., d_model] -> [..., 1]"""
    return np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None, eps: float) -> np.ndarray:
    """N(x) = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta.  [..., d_model] -> [..., d_model]"""
    return normalize(x, gamma, beta, "layernorm", eps)[0]


def rms_norm(x: np.ndarray, gamma: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """N(x) = gamma * x / sqrt(mean(x^2) + eps).  [..., d_model] -> [..., d_model]"""
    return normalize(x, gamma, None, "rmsnorm", eps, out)[0]


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None, kind: str,
              eps: float, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Either norm, also returning its divisor s, which attribution freezes.  -> [..., d_model], [..., 1]

    LayerNorm: y = (x - mean(x)) / s * gamma + beta, s = sqrt(var(x) + eps).
    RMSNorm:   y = x / s * gamma,                    s = sqrt(mean(x^2) + eps).
    Both are computed in place on the one array y (fresh, or out; out may be x itself): a norm
    runs twice per layer, and each extra [n_seq, d_model] temporary is memory to fault in and
    pass over (issue 6).
    """
    if kind == "layernorm":
        y = np.subtract(x, x.mean(-1, keepdims=True), out=out)  # centred: var(x) = mean(y^2)
        s = rms_norm_scale(y, eps)
        y /= s
    else:
        s = rms_norm_scale(x, eps)
        y = np.divide(x, s, out=out)
    y *= gamma
    if beta is not None:
        y += beta
    return y, s


def gelu_new(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Fused in place into one buffer (fresh, or out): written with temporaries it allocates eight
    [n_seq, d_mlp] arrays; this way costs about a quarter of the time (issue 6). The inner term is
    factored as x (c + c 0.044715 x^2), which equals c (x + 0.044715 x^3) up to rounding.
    """
    c = x.dtype.type(math.sqrt(2.0 / math.pi))
    y = np.multiply(x, x, out=out)                          # x^2
    y *= c * x.dtype.type(0.044715)
    y += c
    y *= x                                                  # c (x + 0.044715 x^3)
    np.tanh(y, out=y)
    y += 1
    y *= x
    y *= x.dtype.type(0.5)
    return y


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, vectorised, to float64 accuracy (numpy has none).  [...] -> [...], x's dtype

    The algorithm of CPython's own fallback erf (Modules/mathmodule.c): for |x| < 1.5 the power series
    erf(x) = 2x/sqrt(pi) exp(-x^2) sum_k (2x^2)^k / (1*3*...*(2k+1)) (25 terms, Horner form);
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


def gelu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))."""
    return np.multiply(0.5 * x, 1.0 + erf(x * x.dtype.type(1.0 / math.sqrt(2.0))), out=out)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """Soft-capping (Gemma 2): cap * tanh(x / cap), a smooth clamp of x to (-cap, cap)."""
    c = x.dtype.type(cap)
    return c * np.tanh(x / c)


def silu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """SiLU (swish): x * sigmoid(x) = x / (1 + exp(-x))."""
    return np.divide(x, 1.0 + np.exp(-x), out=out)


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.maximum(x, 0, out=out)


ACTIVATIONS = {"gelu_new": gelu_new, "gelu_tanh": gelu_new, "gelu_pytorch_tanh": gelu_new,
               "gelu": gelu, "silu": silu, "swish": silu, "relu": relu}


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)); subtracting the max keeps exp from overflowing."""
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def softmax_in_place(x: np.ndarray) -> np.ndarray:
    """softmax over the last axis, overwriting x (which may be a view) and returning it.

    The same equation as ``softmax``; attention calls it on its score blocks so that no
    [n_heads, n_seq, n_seq]-sized temporaries are allocated (issue 6).
    """
    x -= x.max(-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(-1, keepdims=True)
    return x


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis, keepdims=True))


def rope_inv_freq(rope: RopeConfig, n_seq: int) -> np.ndarray:
    """The rotary frequencies theta^(-2i/d), rescaled by the config's rope type.  -> [rotary_dim // 2] float64

    Computed in float64 whatever the compute dtype: the tables are cast once, afterwards.
    """
    dim = rope.rotary_dim
    theta = rope.theta
    if rope.kind == "dynamic" and rope.max_position_embeddings and n_seq > rope.max_position_embeddings:
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
    smooth = (original_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    middle = (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(in_band, middle, scaled)


def rope_tables(rope: RopeConfig, n_seq: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * frequency, in the half-split layout.  -> 2 x [n_seq, rotary_dim]"""
    angles = np.outer(np.arange(n_seq, dtype=np.float64), rope_inv_freq(rope, n_seq))  # [n_seq, rotary_dim // 2]
    angles = np.concatenate([angles, angles], axis=-1)                                 # [n_seq, rotary_dim]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rotate each head's first rotary_dim dims by position, into out (which may be x itself).

    [..., n_seq, n_heads, d_head] -> same. x_rot -> x_rot * cos + rotate_half(x_rot) * sin; the
    dims past rotary_dim pass unchanged. Hugging Face checkpoints use the half-split ("rotate_half")
    layout: dimension i pairs with i + rotary_dim/2, not with its neighbour i+1 as in Meta's
    interleaved layout.
    """
    r = cos.shape[-1]
    x_rot = x[..., :r]
    half = r // 2
    rotated_half = np.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)  # rotate_half(x): a copy
    cos, sin = cos[:, None, :], sin[:, None, :]                                       # broadcast over heads
    if out is None:
        out = np.empty_like(x)
    if out is not x:
        out[..., r:] = x[..., r:]
    out_rot = np.multiply(x_rot, cos, out=out[..., :r])
    out_rot += rotated_half * sin
    return out
