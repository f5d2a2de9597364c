"""Each equation in minilens/ops.py against the transformers (PyTorch) code it stands in for.

This is the first layer of evidence (STYLE.md 11): one equation at a time, on identical inputs,
before any model is assembled. Every assertion names the usual mistake, so a failure says where
to look. The inputs are built so that each of those mistakes shows up as an O(1e-2) or larger
gap: rows small enough that eps matters, prompts longer than 20 tokens for RoPE, rows of logits
near 1000 for the softmax, scores well past the soft-cap.

Tolerances and why:
- **float64 on both sides, 1e-12 or tighter** wherever the torch code runs in the input's dtype
  (linear, LayerNorm, rotate_half, apply_rotary_pos_emb, the activations, softmax, soft-capping).
  What is left is float64 rounding in a different order of operations, ~1e-16 per operation.
- **float32 references, ~1e-5.** Stock transformers computes three things in float32 whatever
  the input: LlamaRMSNorm upcasts to float32, the rotary inverse frequencies (ROPE_INIT_FUNCTIONS,
  *RotaryEmbedding) are built with ``dtype=torch.float``, and Gemma 2's eager attention runs its
  softmax in float32. Each test states its float32 bound from the size of the numbers involved.
- **Exact equality** for what only moves numbers around (repeat_kv) or compares integers (masks).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from _torch import import_torch

torch, transformers = import_torch()

from transformers import GPTNeoXConfig, LlamaConfig, masking_utils  # noqa: E402
from transformers.activations import ACT2FN, GELUActivation, NewGELUActivation  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.gemma2 import modeling_gemma2  # noqa: E402
from transformers.models.gpt_neox import modeling_gpt_neox  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

from minilens import ops  # noqa: E402
from minilens.config import RopeConfig  # noqa: E402

N_SEQ = 48          # > 20: a wrong RoPE layout only shows up later in the sequence (STYLE.md 6)
F64_TOL = 1e-12     # float64 against float64: rounding only
F32_TOL = 1e-5      # float32 against float32: ~100 float32 ulps (6e-8 each) of headroom


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def numpy(t) -> np.ndarray:
    return t.detach().numpy()


def gap(ours: np.ndarray, theirs: np.ndarray) -> str:
    """The largest difference, for the end of an assert message."""
    if ours.shape != theirs.shape:
        return f"shapes differ: ours {ours.shape}, transformers {theirs.shape}"
    with np.errstate(invalid="ignore"):
        return f"largest |ours - transformers| = {np.nanmax(np.abs(ours - theirs)):.3g}"


def close(ours: np.ndarray, theirs: np.ndarray, rtol: float, atol: float) -> bool:
    return ours.shape == theirs.shape and np.allclose(ours, theirs, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# linear
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_in, d_out", [(16, 16), (16, 24)])   # square: a missing .T still runs
def test_linear_matches_torch_linear(bias, d_in, d_out):
    r = rng(1)
    x = r.standard_normal((2, 5, d_in))                            # [batch, n_seq, d_in]
    weight = r.standard_normal((d_out, d_in))                      # nn.Linear: [d_out, d_in]
    b = r.standard_normal(d_out) if bias else None
    theirs = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(weight),
                                        None if b is None else torch.from_numpy(b))
    lesson = ("linear: minilens stores W as [d_in, d_out] and computes x @ W + b; nn.Linear "
              "stores [d_out, d_in] and computes x @ W.T + b. Is a transpose missing or doubled, "
              "and is the bias added once, after the product?")
    try:
        ours = ops.linear(x, weight.T, b)                          # minilens stores [d_in, d_out]
    except ValueError as e:                                        # a non-square W transposed
        pytest.fail(f"{lesson} ({e})")
    # float64 matmul, sums of 16 products in another order: ~1e-15.
    assert close(ours, numpy(theirs), F64_TOL, F64_TOL), f"{lesson} ({gap(ours, numpy(theirs))})"


# ------------------------------------------------------------------------------------------
# Norms
# ------------------------------------------------------------------------------------------

def rows_at_scales(d: int, dtype) -> np.ndarray:
    """[3, 5, d]: rows of size ~1e-3 (where eps = 1e-5 dominates mean(x^2) ~ 1e-6), ~1 and ~100."""
    x = rng(2).standard_normal((3, 5, d))
    return (x * np.array([1e-3, 1.0, 100.0])[:, None, None]).astype(dtype)


def test_rms_norm_matches_llama_rms_norm():
    d, eps = 64, 1e-5
    x = rows_at_scales(d, np.float32)
    gamma = (1 + 0.5 * rng(3).standard_normal(d)).astype(np.float32)
    module = modeling_llama.LlamaRMSNorm(d, eps=eps)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        theirs = numpy(module(torch.from_numpy(x)))
    ours, s = ops.rms_norm(x, gamma, eps)
    # LlamaRMSNorm upcasts to float32 whatever the input, so the comparison is float32 on both
    # sides: outputs are O(1) (x / s is unit-RMS, gamma ~ 1) and a mean of 64 squares, a sqrt and
    # a divide round at a few ulps (6e-8 each; measured 5e-7). 1e-5 leaves headroom; the
    # mistakes named below are >= 1e-2.
    assert ours.dtype == np.float32, f"rms_norm turned float32 into {ours.dtype}"
    assert close(ours, theirs, F32_TOL, F32_TOL), (
        "RMSNorm: is eps inside the sqrt, and is it the mean (not the sum) of x**2 over d_model? "
        "N(x) = x / sqrt(mean(x**2) + eps) * gamma, with no mean subtracted and no beta. "
        f"({gap(ours, theirs)})")
    # The divisor s, which attribution freezes: one per row, [..., 1], in float64 against torch.
    x64 = x.astype(np.float64)
    s64 = ops.rms(x64, eps)
    expected = numpy(torch.sqrt(torch.from_numpy(x64).pow(2).mean(-1, keepdim=True) + eps))
    assert s.shape == x.shape[:-1] + (1,), f"rms_norm's divisor s is {s.shape}, not [..., 1]"
    assert close(s64, expected, F64_TOL, 0.0), (
        "rms: s = sqrt(mean(x**2) + eps), one per row with keepdims: is eps inside the sqrt, and "
        f"is it the mean over the last axis? ({gap(s64, expected)})")


def test_layer_norm_matches_torch_layer_norm():
    d, eps = 16, 1e-5                        # small d: n - 1 instead of n is a 3% error in s
    x = rows_at_scales(d, np.float64) + 3.0  # an offset the mean must remove
    r = rng(4)
    gamma, beta = 1 + 0.5 * r.standard_normal(d), r.standard_normal(d)
    module = torch.nn.LayerNorm(d, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
        theirs = numpy(module(torch.from_numpy(x)))
    ours, s = ops.layer_norm(x, gamma, beta, eps)
    # float64 throughout (nn.LayerNorm keeps the dtype): outputs are O(1), rounding ~1e-15.
    assert close(ours, theirs, F64_TOL, F64_TOL), (
        "LayerNorm: the variance is the biased one (divide by n, not n - 1: torch.var's default "
        "is unbiased), the mean is subtracted before squaring, eps goes inside the sqrt, and beta "
        f"is added after gamma multiplies. ({gap(ours, theirs)})")
    biased = torch.var(torch.from_numpy(x), dim=-1, keepdim=True, correction=0)
    expected = numpy(torch.sqrt(biased + eps))
    assert close(s, expected, F64_TOL, 0.0), (
        "LayerNorm's divisor: s = sqrt(var(x) + eps) with the biased variance (correction=0), "
        f"one per row, [..., 1]. ({gap(s, expected)})")


# ------------------------------------------------------------------------------------------
# RoPE
# ------------------------------------------------------------------------------------------

ROPE_LESSON = ("RoPE: HF checkpoints use the half-split layout: dim i pairs with dim i + r/2 "
               "(rotate_half: [x1, x2] -> [-x2, x1]) and cos/sin are [angles, angles] "
               "concatenated. Pairing neighbours 2i, 2i+1 (Meta's interleaved layout), or "
               "repeating each angle in place, is right at position 0 and wrong after it.")


def llama_config(d_head: int, rope_parameters: dict, max_position_embeddings: int = 4096):
    return LlamaConfig(hidden_size=4 * d_head, num_attention_heads=4, head_dim=d_head,
                       max_position_embeddings=max_position_embeddings,
                       rope_parameters=rope_parameters)


def heads_first(x: np.ndarray):
    """minilens [n_seq, n_heads, d_head] -> transformers [batch=1, n_heads, n_seq, d_head]"""
    return torch.from_numpy(x.swapaxes(0, 1)[None].copy())


def test_rotate_half_matches_transformers():
    x = rng(5).standard_normal((3, 4, 16))
    theirs = numpy(modeling_llama.rotate_half(torch.from_numpy(x)))
    assert np.array_equal(ops.rotate_half(x), theirs), ROPE_LESSON


def test_apply_rope_matches_apply_rotary_pos_emb():
    n_heads, d_head = 4, 16
    cos, sin = ops.rope_tables(RopeConfig(theta=10000.0, rotary_dim=d_head), N_SEQ, np.float64)
    r = rng(6)
    q = r.standard_normal((N_SEQ, n_heads, d_head))                # [n_seq, n_heads, d_head]
    k = r.standard_normal((N_SEQ, n_heads, d_head))
    # transformers: q, k [batch, n_heads, n_seq, d_head], cos, sin [batch, n_seq, d_head]
    tq, tk = modeling_llama.apply_rotary_pos_emb(heads_first(q), heads_first(k),
                                                 torch.from_numpy(cos)[None],
                                                 torch.from_numpy(sin)[None])
    for ours, theirs in ((ops.apply_rope(q, cos, sin), tq), (ops.apply_rope(k, cos, sin), tk)):
        theirs = numpy(theirs[0]).swapaxes(0, 1)                   # -> [n_seq, n_heads, d_head]
        # Same float64 tables on both sides; two products and a sum per element: ~1e-16.
        assert close(ours, theirs, F64_TOL, F64_TOL), f"{ROPE_LESSON} ({gap(ours, theirs)})"


# name -> (minilens RopeConfig fields, transformers rope_parameters, n_seq)
ROPE_KINDS = {
    "default": (dict(), dict(rope_type="default"), N_SEQ),
    "linear": (dict(kind="linear", factor=4.0), dict(rope_type="linear", factor=4.0), N_SEQ),
    # dynamic NTK changes nothing up to max_position_embeddings (32 here) and grows theta beyond
    "dynamic-within": (dict(kind="dynamic", factor=2.0, max_position_embeddings=32),
                       dict(rope_type="dynamic", factor=2.0), 24),
    "dynamic-beyond": (dict(kind="dynamic", factor=2.0, max_position_embeddings=32),
                       dict(rope_type="dynamic", factor=2.0), 80),
    # Llama 3.1's values; with d_head 128 and theta 5e5, several wavelengths fall in the middle band
    "llama3": (dict(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192),
               dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192), N_SEQ),
}
INV_FREQ_LESSONS = {
    "default": "RoPE frequencies: theta ** (-2i / d) for i < d/2 (d the rotary dim, not d_model).",
    "linear": "linear scaling: every frequency divided by factor (positions stretched), theta "
              "unchanged.",
    "dynamic": "dynamic NTK: only when n_seq > max_position_embeddings, theta *= (factor * n_seq "
               "/ max_pos - (factor - 1)) ** (d / (d - 2)); at or below max_pos nothing changes.",
    "llama3": "llama3: wavelengths 2 pi / inv_freq longer than original_len / low_freq_factor are "
              "divided by factor, shorter than original_len / high_freq_factor kept, and the band "
              "between (edges included) interpolates with smooth = (original_len / wavelen - low) "
              "/ (high - low). Is the test on the wavelength, not the frequency?",
}


def rope_case(name: str, d_head: int):
    ours, theirs, n_seq = ROPE_KINDS[name]
    theta = 500000.0 if name == "llama3" else 10000.0
    rope = RopeConfig(theta=theta, rotary_dim=d_head, **ours)
    max_pos = ours.get("max_position_embeddings") or 131072
    return rope, llama_config(d_head, dict(theirs, rope_theta=theta), max_pos), n_seq


@pytest.mark.parametrize("name", ROPE_KINDS)
def test_rope_inv_freq_matches_rope_init_functions(name):
    d_head = 128 if name == "llama3" else 32
    rope, config, n_seq = rope_case(name, d_head)
    if name == "default":
        theirs, _ = modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        theirs, _ = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, None,
                                                                             seq_len=n_seq)
    theirs = numpy(theirs).astype(np.float64)
    ours = ops.rope_inv_freq(rope, n_seq)
    if name == "llama3":                     # the band must be populated, or half the test is idle
        wavelen = 2 * math.pi / ops.rope_inv_freq(RopeConfig(500000.0, d_head), n_seq)
        bands = np.histogram(wavelen, [0, 8192 / 4, 8192 / 1, np.inf])[0]
        assert bands.min() >= 3, f"llama3 case: wavelengths per band {bands}, want >= 3 in each"
    # transformers builds inv_freq in float32: theta ** (2i/d) with the exponent rounded to
    # float32 is off by up to ~ln(theta) * 6e-8 relative (~1e-6 for theta = 5e5; measured 3e-7).
    # rtol 5e-6; the mistakes the lessons name move frequencies by a few percent or more.
    lesson = INV_FREQ_LESSONS[name.split("-")[0]]
    rel = np.abs(ours / theirs - 1).max() if ours.shape == theirs.shape else np.nan
    assert close(ours, theirs, 5e-6, 0.0), (
        f"{lesson} ({gap(ours, theirs)}, largest relative {rel:.3g}, n_seq {n_seq})")


@pytest.mark.parametrize("name", ROPE_KINDS)
def test_rope_tables_match_llama_rotary_embedding(name):
    d_head = 128 if name == "llama3" else 32
    rope, config, n_seq = rope_case(name, d_head)
    module = modeling_llama.LlamaRotaryEmbedding(config)
    positions = torch.arange(n_seq)[None]
    cos, sin = module(torch.zeros(1, dtype=torch.float64), positions)  # float32 math, then cast
    ours_cos, ours_sin = ops.rope_tables(rope, n_seq, np.float64)
    # The angles position * inv_freq reach ~n_seq radians and are rounded in float32 by
    # transformers: ~n_seq * 6e-8 = 5e-6 at n_seq 80 (measured 3e-6). atol 2e-5 on cos and sin.
    for ours, theirs in ((ours_cos, cos), (ours_sin, sin)):
        theirs = numpy(theirs[0])
        assert close(ours, theirs, 0.0, 2e-5), (
            f"{ROPE_LESSON} If test_rope_inv_freq_matches_rope_init_functions[{name}] fails too, "
            f"the frequencies are wrong, not the layout: fix them first. ({gap(ours, theirs)})")


def test_partial_rotary_matches_gpt_neox():
    """Pythia: only the first rotary_dim = d_head * rotary_pct dims of each head rotate."""
    n_heads, d_head = 4, 16
    config = GPTNeoXConfig(hidden_size=n_heads * d_head, num_attention_heads=n_heads,
                           rotary_pct=0.25, max_position_embeddings=256)
    rope = RopeConfig(theta=10000.0, rotary_dim=4)
    cos, sin = modeling_gpt_neox.GPTNeoXRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float64),
                                                                torch.arange(N_SEQ)[None])
    ours_cos, ours_sin = ops.rope_tables(rope, N_SEQ, np.float64)
    lesson = ("partial rotary: the frequencies use the rotary dim r (theta ** (-2i / r)), only the "
              "first r dims of each head rotate, rotate_half pairs i with i + r/2 (not "
              "i + d_head/2), and the other d_head - r dims pass through unchanged.")
    # float32 angles in transformers, as in test_rope_tables_match_llama_rotary_embedding.
    for ours, theirs in ((ours_cos, numpy(cos[0])), (ours_sin, numpy(sin[0]))):
        assert close(ours, theirs, 0.0, 2e-5), f"{lesson} (tables: {gap(ours, theirs)})"
    q = rng(7).standard_normal((N_SEQ, n_heads, d_head))
    tq = heads_first(q)                                        # [batch, n_heads, n_seq, d_head]
    tcos, tsin = torch.from_numpy(ours_cos)[None], torch.from_numpy(ours_sin)[None]
    theirs = numpy(modeling_gpt_neox.apply_rotary_pos_emb(tq, tq, tcos, tsin)[0][0]).swapaxes(0, 1)
    ours = ops.apply_rope(q, ours_cos, ours_sin)
    # the same float64 tables on both sides: rounding only.
    assert close(ours, theirs, F64_TOL, F64_TOL), f"{lesson} ({gap(ours, theirs)})"


# ------------------------------------------------------------------------------------------
# Activations
# ------------------------------------------------------------------------------------------

X_ACT = np.concatenate([np.linspace(-12, 12, 2401), [-30.0, -8.5, -1e-8, 0.0, 1e-8, 8.5, 30.0]])
# float64 on both sides; the largest values are ~30, so 1e-12 relative + 1e-15 absolute is
# rounding only (the absolute part covers 1 + erf(x) and 1 + tanh(x) cancelling for x << 0).
ACT_RTOL, ACT_ATOL = 1e-12, 1e-15


def act_gap(ours, module) -> tuple[bool, str]:
    theirs = numpy(module(torch.from_numpy(X_ACT)))
    return close(ours, theirs, ACT_RTOL, ACT_ATOL), gap(ours, theirs)


def test_gelu_new_matches_new_gelu_activation():
    ok, diff = act_gap(ops.gelu_new(X_ACT), NewGELUActivation())
    assert ok, ("gelu_new (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3))). Is it x**3 "
                f"inside the tanh, and sqrt(2/pi), not sqrt(2)/pi? ({diff})")


def test_gelu_matches_exact_gelu_activation():
    ok, diff = act_gap(ops.gelu(X_ACT), GELUActivation())
    assert ok, ("gelu (exact): x Phi(x) = 0.5 x (1 + erf(x / sqrt(2))). The tanh approximation "
                f"differs by up to ~5e-4; is the argument of erf divided by sqrt(2)? ({diff})")


def test_silu_matches_torch_silu():
    ok, diff = act_gap(ops.silu(X_ACT), torch.nn.functional.silu)
    assert ok, f"silu: x * sigmoid(x) = x / (1 + exp(-x)), not sigmoid(x) alone. ({diff})"


# minilens's own name "gelu_tanh" (config.py maps Gemma's "gelu" and "gelu_pytorch_tanh" to it)
# is not an ACT2FN key; it stands for the tanh approximation, ACT2FN's "gelu_pytorch_tanh".
HF_NAME = {"gelu_tanh": "gelu_pytorch_tanh"}


@pytest.mark.parametrize("name", sorted(ops.ACTIVATIONS))
def test_activation_names_mean_what_act2fn_means(name):
    hf_name = HF_NAME.get(name, name)
    ok, diff = act_gap(ops.ACTIVATIONS[name](X_ACT), ACT2FN[hf_name])
    assert ok, (f"ops.ACTIVATIONS[{name!r}] is not transformers' ACT2FN[{hf_name!r}]. In HF, "
                "'gelu' is the exact erf GELU; 'gelu_new' and 'gelu_pytorch_tanh' are the tanh "
                f"approximation; 'swish' is silu. ({diff})")


# ------------------------------------------------------------------------------------------
# Attention: grouped-query heads, softmax, the mask, soft-capping
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_kv_heads, group", [(2, 3), (3, 2), (4, 1)])
def test_gqa_repeat_matches_repeat_kv(n_kv_heads, group):
    x = rng(8).standard_normal((2, 5, n_kv_heads, 4))             # [batch, n_seq, n_kv_heads, d]
    ours = ops.gqa_repeat(x, group)                                # [batch, n_seq, n_heads, d_head]
    theirs = modeling_llama.repeat_kv(torch.from_numpy(x).transpose(1, 2), group)  # [b, h, s, d]
    theirs = numpy(theirs.transpose(1, 2))
    # A copy, no arithmetic: exactly equal.
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs), (
        "GQA: query head h reads kv head h // group (repeat-interleave: kv0, kv0, kv0, kv1, ...), "
        "not h % n_kv_heads (tiling: kv0, kv1, kv0, ...). np.repeat, not np.tile; on the heads "
        f"axis, -2 in [..., n_seq, n_kv_heads, d_head]. ({gap(ours, theirs)})")


def softmax_rows() -> np.ndarray:
    """[5, 6]: ordinary rows, rows near +-1000 (exp overflows or underflows), masked rows."""
    r = rng(9)
    return np.stack([r.standard_normal(6),
                     1000.0 + r.standard_normal(6),                # exp(1000) = inf in float64
                     -1000.0 + r.standard_normal(6),               # exp(-1000) = 0: 0 / 0
                     np.where([1, 0, 1, 0, 0, 1], r.standard_normal(6), -np.inf),
                     np.where([1, 0, 0, 0, 0, 0], 700.0, -np.inf)])  # one key visible


SOFTMAX_LESSON = ("softmax: subtract the row max before exp, exp(x - max) / sum(exp(x - max)): "
                  "exp(1000) overflows to inf and inf / inf is nan; a row near -1000 gives 0 / 0. "
                  "-inf from the mask must come out as exactly 0.")


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_matches_torch_softmax(axis):
    x = softmax_rows() if axis == -1 else softmax_rows().T.copy()
    with np.errstate(over="raise", invalid="raise"):  # an overflowing exp fails here, taught
        try:
            ours = ops.softmax(x, axis=axis)
        except FloatingPointError as e:
            pytest.fail(f"{SOFTMAX_LESSON} ({e})")
    theirs = numpy(torch.softmax(torch.from_numpy(x), dim=axis))
    # float64 on both sides, probabilities in [0, 1]: rounding only.
    assert not np.isnan(ours).any(), SOFTMAX_LESSON
    assert close(ours, theirs, F64_TOL, 1e-15), f"{SOFTMAX_LESSON} ({gap(ours, theirs)})"
    assert (ours[np.isneginf(x)] == 0).all(), SOFTMAX_LESSON


def test_log_softmax_matches_torch_log_softmax():
    x = softmax_rows()
    with np.errstate(divide="ignore"):       # log(0) = -inf where the mask hides a key
        ours = ops.log_softmax(x)
    theirs = numpy(torch.log_softmax(torch.from_numpy(x), dim=-1))
    # float64; values up to ~10 in size, -inf where masked (allclose counts equal infinities close).
    assert close(ours, theirs, F64_TOL, F64_TOL), (
        "log_softmax: (x - max) - log(sum(exp(x - max))), not log(softmax(x)) (log(0) = -inf for "
        f"small probabilities) and not without the max (overflow). ({gap(ours, theirs)})")


@pytest.mark.parametrize("window", [None, 1, 3, 8, 20])
def test_causal_mask_matches_masking_utils(window):
    n_seq = 12
    q_idx, kv_idx = torch.arange(n_seq)[:, None], torch.arange(n_seq)[None, :]
    if window is None:
        allowed = masking_utils.causal_mask_function(0, 0, q_idx, kv_idx)
    else:
        allowed = masking_utils.sliding_window_causal_mask_function(window)(0, 0, q_idx, kv_idx)
    allowed = numpy(allowed)                                       # [n_seq(q), n_seq(k)] bool
    mask = ops.causal_mask(n_seq, window, np.float32)
    assert mask.dtype == np.float32, f"causal_mask made {mask.dtype}, not the scores' dtype"
    ours = mask == 0
    assert np.array_equal(ours, allowed) and np.isneginf(mask[~allowed]).all(), (
        "causal mask: query q sees keys k <= q (not k < q); with a sliding window only the "
        "window keys q - window + 1 .. q, i.e. k > q - window (k >= q - window is one too "
        f"many). 0 where allowed, -inf where hidden. window {window}: ours\n{ours.astype(int)}\n"
        f"transformers\n{allowed.astype(int)}")


SOFTCAP_LESSON = ("soft-capping (Gemma 2): cap * tanh(x / cap), on the scaled scores before the "
                  "mask and on the final logits. tanh(x) * cap, without dividing by cap first, is "
                  "the usual slip.")


def test_softcap_matches_gemma2_formula():
    cap = 30.0
    x = np.linspace(-300, 300, 6001)
    # Gemma2ForCausalLM.forward's final-logit lines, verbatim, in float64.
    t = torch.from_numpy(x)
    theirs = numpy(torch.tanh(t / cap) * cap)
    ours = ops.softcap(x, cap)
    # float64, values below cap = 30: rounding only.
    assert close(ours, theirs, F64_TOL, F64_TOL), f"{SOFTCAP_LESSON} ({gap(ours, theirs)})"


def test_softcap_in_attention_matches_gemma2_eager_attention():
    """Gemma 2's own attention code: softcap(q k^T * scale), then + mask, then softmax."""
    n_heads, d_head, n_seq, cap, scale = 2, 8, 10, 5.0, 8 ** -0.5
    r = rng(10)
    q, k, v = (4 * r.standard_normal((1, n_heads, n_seq, d_head)) for _ in range(3))
    mask = ops.causal_mask(n_seq, None, np.float64)
    module = SimpleNamespace(num_key_value_groups=1, training=False, head_dim=d_head)
    _, theirs = modeling_gemma2.eager_attention_forward(
        module, *(torch.from_numpy(a) for a in (q, k, v)), torch.from_numpy(mask)[None, None],
        scaling=scale, softcap=cap)
    scores = q @ k.swapaxes(-1, -2) * scale                       # [1, n_heads, n_seq, n_seq]
    assert np.abs(scores).max() > 3 * cap, "the scores must reach well past the cap"
    ours = ops.softmax(ops.softcap(scores, cap) + mask)
    # transformers runs this softmax in float32: probabilities in [0, 1] off by a few float32
    # ulps (6e-8). atol 1e-6; an uncapped or misplaced cap moves them by O(0.1).
    theirs = numpy(theirs)
    assert close(ours, theirs, 0.0, 1e-6), f"{SOFTCAP_LESSON} ({gap(ours, theirs)})"
