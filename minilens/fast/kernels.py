"""The in-place forms of ops.py's equations, for the fast forward pass (fast/forward.py).

Each computes the same equation as its namesake in ops.py, into one buffer (fresh, or ``out``,
which may be the input itself), so that the forward pass allocates no temporaries the size of
its activations. tests/test_fast_paths.py checks each against ops.py.
"""

from __future__ import annotations

import math

import numpy as np

from .. import ops


def rms_norm_scale(x: np.ndarray, eps: float) -> np.ndarray:
    """s = sqrt(mean(x^2) + eps).  [..., d_model] -> [..., 1]"""
    return np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None, kind: str,
              eps: float, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Either norm, also returning its divisor s, which attribution freezes.

    -> [..., d_model], [..., 1]

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


def gelu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The exact GELU, 0.5 x (1 + erf(x / sqrt(2))), into out."""
    return np.multiply(0.5 * x, 1.0 + ops.erf(x * x.dtype.type(1.0 / math.sqrt(2.0))), out=out)


def silu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x / (1 + exp(-x)), into out, which holds the denominator on the way: no temporaries, unless
    out is x itself."""
    if out is None or np.may_share_memory(out, x):
        return np.divide(x, 1.0 + np.exp(-x), out=out)
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    return np.divide(x, out, out=out)


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.maximum(x, 0, out=out)


ACTIVATIONS = {"gelu_new": gelu_new, "gelu_tanh": gelu_new, "gelu_pytorch_tanh": gelu_new,
               "gelu": gelu, "silu": silu, "swish": silu, "relu": relu}


# exp(x) is far from overflow, and from underflow to 0, in float32 for |x| up to this:
# exp(64) = 6e27, against float32's largest 3e38 and smallest normal 1e-38.
EXP_SAFE = 64.0


def softmax_in_place(x: np.ndarray, bound: float = np.inf) -> np.ndarray:
    """softmax over the last axis, overwriting x (which may be a view) and returning it.

    The same equation as ``softmax``; attention calls it on its score blocks so that no
    [n_heads, n_seq, n_seq]-sized temporaries are allocated (issue 6). ``bound``: a number no
    |x| exceeds (masked -inf entries aside). When it is at most EXP_SAFE, exp(x) can neither
    overflow nor vanish, so the max is not subtracted first: that saves two of the five passes
    over the scores. softmax(x - max) and softmax(x) are the same numbers up to rounding.
    """
    if not bound <= EXP_SAFE:
        x -= x.max(-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(-1, keepdims=True)
    return x


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:
    """Rotate each head's first rotary_dim dims by position, into out (which may be x itself).

    [..., n_seq, n_heads, d_head] -> same. x_rot -> x_rot * cos + rotate_half(x_rot) * sin; the
    dims past rotary_dim pass unchanged. Hugging Face checkpoints use the half-split ("rotate_half")
    layout: dimension i pairs with i + rotary_dim/2, not with its neighbour i+1 as in Meta's
    interleaved layout.
    """
    r = cos.shape[-1]
    x_rot = x[..., :r]
    half = r // 2
    # rotate_half(x): a copy
    rotated_half = np.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]                  # broadcast over heads
    if out is None:
        out = np.empty_like(x)
    if out is not x:
        out[..., r:] = x[..., r:]
    out_rot = np.multiply(x_rot, cos, out=out[..., :r])
    out_rot += rotated_half * sin
    return out


def unembed(normalized: np.ndarray, g, cfg, out: np.ndarray) -> np.ndarray:
    """forward.unembed written into ``out``: normalized W_U + b_U, then the final soft-cap.
    [..., d_model] -> out [..., d_vocab]"""
    logits = np.matmul(normalized, g.W_U, out=out)
    if g.b_U is not None:
        logits += g.b_U
    if cfg.final_softcap:
        logits[...] = ops.softcap(logits, cfg.final_softcap)
    return logits
