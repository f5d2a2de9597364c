"""The newer families (issue 7) against transformers: GPT-NeoX (Pythia), Mistral, Qwen2, Qwen3,
Gemma, Gemma 2 and Phi-3, each on checkpoints these tests make with ``save_pretrained``.

Every family runs through the one forward pass; what differs is data (ModelConfig switches) and the
loader's renaming. For each variant we compare every ``resid_pre``, the final normalized stream and
the logits at every position of a 48-token prompt, which is longer than every sliding window here
(8).

Tolerances and why (as in test_parity.py):
- **float64 against a float64-patched reference, 1e-9.** Stock transformers leaves float64 in three
  places even inside a float64 model: RMSNorm (all variants, including Gemma's (1 + w) form and
  Qwen3's per-head q/k norm) upcasts to float32, the rotary tables are built in float32, and eager
  attention runs its softmax in float32. The patches below recompute those three steps in float64
  with formulas written here from the papers. What is left is float64 rounding, ~1e-15 per op.
- **float64 against stock, 1e-6 x max(1, max |reference|).** Stock's float32 steps round at ~6e-8
  relative to the values they touch, so its floor scales with the numbers (measured up to ~5e-7).
  For Gemma 2's logits the scale is the largest *pre-cap* logit: the rounding happens before tanh.
- **float32, 1e-4 x max(1, max |reference|).** Both sides round to float32 and sum in different
  orders; a real bug (a wrong split of a fused matrix, a missing +1, an off-by-one window) is
  O(1e-1).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from _torch import import_torch

torch, transformers = import_torch()

import minilens as ml  # noqa: E402
from factories import (  # noqa: E402
    assert_within as assert_within_hint,
    parity_errors as errors,
    randomize,
)
from minilens import ops  # noqa: E402
from minilens.fast.forward import causal_mask  # noqa: E402

N_SEQ = 48
WINDOW = 8
F64_TOL = 1e-9
F64_STOCK_TOL = 1e-6
F32_REL_TOL = 1e-4
D_VOCAB = 128

_counter = itertools.count()

# Tiny shapes shared by the families; each variant overrides what it exercises.
BASE = dict(vocab_size=D_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)
GQA = dict(num_key_value_heads=2)

# name -> (transformers config class name, overrides)
VARIANTS = {
    # Pythia: parallel residual, a quarter of each head rotates (d_head 16 -> 4 rotary dims).
    "gpt_neox-parallel": ("GPTNeoXConfig", dict(hidden_size=64, rotary_pct=0.25)),
    "gpt_neox-sequential": ("GPTNeoXConfig", dict(hidden_size=64, rotary_pct=0.5,
                                                  use_parallel_residual=False)),
    "gpt_neox-tied": ("GPTNeoXConfig", dict(rotary_pct=1.0, tie_word_embeddings=True)),
    "mistral-window": ("MistralConfig", dict(GQA, sliding_window=WINDOW)),
    "qwen2-untied": ("Qwen2Config", dict(GQA, tie_word_embeddings=False)),
    "qwen2-tied": ("Qwen2Config", dict(GQA, tie_word_embeddings=True)),
    # use_sliding_window with max_window_layers=1: layer 0 full, layer 1 sliding.
    "qwen2-sliding": ("Qwen2Config", dict(GQA, use_sliding_window=True, sliding_window=WINDOW,
                                          max_window_layers=1)),
    # head_dim 16 with d_model 32 and 4 heads: the query width 64 is not d_model.
    "qwen3": ("Qwen3Config", dict(GQA, head_dim=16)),
    "gemma": ("GemmaConfig", dict(GQA, head_dim=16)),
    # 3 layers: sliding, full, sliding. Small caps so that tanh really bends the numbers, and a
    # query_pre_attn_scalar that is not d_head.
    "gemma2": ("Gemma2Config", dict(GQA, num_hidden_layers=3, head_dim=16, sliding_window=WINDOW,
                                    attn_logit_softcapping=3.0, final_logit_softcapping=5.0,
                                    query_pre_attn_scalar=24)),
    "phi3": ("Phi3Config", dict(GQA)),
    "phi3-partial-window": ("Phi3Config", dict(GQA, partial_rotary_factor=0.5,
                                               sliding_window=WINDOW)),
}


def make(tmp_path, variant: str, seed: int = 0) -> Path:
    """A random checkpoint of ``variant`` saved (float32) under tmp_path.  -> folder"""
    cls_name, overrides = VARIANTS[variant]
    cfg = getattr(transformers, cls_name)(**{**BASE, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float64)
    # norm weights ~1 +- 0.2, biases ~0.2, matrices O(1/sqrt(fan_in)): nothing hides
    randomize(model, seed)
    folder = Path(tmp_path) / f"{variant}-{next(_counter)}"
    model.to(torch.float32).save_pretrained(folder, safe_serialization=True)
    return folder


def prompt(n_seq: int = N_SEQ, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, D_VOCAB, size=n_seq, dtype=np.int64)


# ------------------------------------------------------------------------------------------
# A float64 reference: the three steps stock transformers runs in float32, rewritten in float64
# ------------------------------------------------------------------------------------------

def rms_norm_float64(self, x):
    """Zhang & Sennrich 2019: gamma * x / sqrt(mean(x^2) + eps), no float32 detour (Llama, Mistral,
    Qwen, Phi-3)."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def gemma_rms_norm_float64(self, x):
    """Gemma's RMSNorm stores gamma - 1: (1 + weight) * x / sqrt(mean(x^2) + eps)."""
    return (1.0 + self.weight) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotary_float64(self, x, position_ids):
    """cos, sin of position * theta^(-2i/r), i < r/2, for the r = d_head * partial_rotary_factor
    rotating dims."""
    c, p = self.config, self.config.rope_parameters
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    r = int(d_head * p.get("partial_rotary_factor", 1.0))
    assert p["rope_type"] == "default", "these variants use default rope only"
    inv_freq = torch.tensor([1.0 / p["rope_theta"] ** (2 * i / r) for i in range(r // 2)],
                            dtype=torch.float64)
    angles = position_ids[..., None].to(torch.float64) * inv_freq      # [batch, n_seq, r / 2]
    emb = torch.cat((angles, angles), dim=-1)                           # half-split layout
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def eager_attention_float64(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            softcap=None, **kwargs):
    """softmax(softcap(q k^T * scale) + mask) v with the softmax in the inputs' dtype (stock:
    float32)."""
    group = query.shape[1] // key.shape[1]              # GQA: repeat-interleave kv heads
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = query @ key.transpose(2, 3) * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is not None:
        scores = scores + attention_mask
    pattern = torch.softmax(scores, dim=-1)
    return (pattern @ value).transpose(1, 2).contiguous(), pattern


def patch_float64(monkeypatch) -> None:
    """Swap the float32 steps of every family's modeling file for the float64 versions above."""
    from transformers.models.gemma import modeling_gemma
    from transformers.models.gemma2 import modeling_gemma2
    from transformers.models.gpt_neox import modeling_gpt_neox
    from transformers.models.mistral import modeling_mistral
    from transformers.models.phi3 import modeling_phi3
    from transformers.models.qwen2 import modeling_qwen2
    from transformers.models.qwen3 import modeling_qwen3
    for module, prefix in [(modeling_mistral, "Mistral"), (modeling_qwen2, "Qwen2"),
                           (modeling_qwen3, "Qwen3"), (modeling_phi3, "Phi3"),
                           (modeling_gemma, "Gemma"), (modeling_gemma2, "Gemma2"),
                           (modeling_gpt_neox, "GPTNeoX")]:
        monkeypatch.setattr(module, "eager_attention_forward", eager_attention_float64)
        monkeypatch.setattr(getattr(module, prefix + "RotaryEmbedding"), "forward", rotary_float64)
        if prefix != "GPTNeoX":  # GPT-NeoX uses torch's LayerNorm, which is float64-clean
            norm = gemma_rms_norm_float64 if prefix.startswith("Gemma") else rms_norm_float64
            monkeypatch.setattr(getattr(module, prefix + "RMSNorm"), "forward", norm)


def reference(folder, ids, dtype) -> dict:
    """transformers (eager attention: Gemma 2's soft-capping needs it) on ids [n_seq], as float64
    numpy."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor(ids)[None], output_hidden_states=True)
    hidden = [h[0].double().numpy() for h in out.hidden_states]
    return {"resid_pre": hidden[:-1], "normalized": hidden[-1],
            "logits": out.logits[0].double().numpy(),
            "n_params": sum(p.numel() for p in model.parameters())}  # a tied W_U is one parameter




HINT = ("resid_pre 0 off: the embedding (Gemma's sqrt(d_model) scale?). "
        "A later layer first: that block "
        "(fused qkv split: per head for GPT-NeoX, q|k|v blocks for Phi-3? (1 + w) folded? "
        "partial rotary? the window's edge?). "
        "Only normalized/logits: the final norm, tied/untied W_U, or the final soft-cap.")


def assert_within(errs: dict, tol: float, what: str) -> None:
    assert_within_hint(errs, tol, what, HINT)


# ------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "textbook"])
def test_parity(variant, fast, tmp_path, monkeypatch):
    folder, ids = make(tmp_path, variant), prompt()
    ours64 = ml.load(folder, dtype=np.float64, fast=fast).run(ids)
    ours32 = ml.load(folder, fast=fast).run(ids)
    assert ours64.logits.dtype == np.float64 and ours32.logits.dtype == np.float32, (
        "dtype silently changed")

    stock = reference(folder, ids, torch.float64)
    assert ours64.model.cfg.n_params == stock["n_params"], (
        "ModelConfig.n_params misses a family's tensors")
    stock64 = errors(ours64, stock, relative=True)
    assert_within(stock64, F64_STOCK_TOL,
                  f"{variant} float64 vs stock transformers (float32 norms/rope/softmax)")
    with monkeypatch.context() as m:
        patch_float64(m)
        patched = reference(folder, ids, torch.float64)
    assert np.abs(stock["logits"] - patched["logits"]).max() > 0, (
        "the float64 patch did not take effect")
    patched64 = errors(ours64, patched)
    assert_within(patched64, F64_TOL, f"{variant} float64 vs float64-patched transformers")

    ref32 = reference(folder, ids, torch.float32)
    scale = max(1.0, float(np.abs(ref32["logits"]).max()))
    f32 = errors(ours32, ref32)
    assert_within({k: v / scale for k, v in f32.items()}, F32_REL_TOL,
                  f"{variant} float32 (relative to max |logit|)")
    print(f"\nFAMILY-PARITY {variant}: float64-patched {max(patched64.values()):.2e}, "
          f"float64-stock(rel) {max(stock64.values()):.2e}, float32 {max(f32.values()):.2e} "
          f"(max |logit| {scale:.1f})")


# ------------------------------------------------------------------------------------------
# The switches, one at a time: each test could fail, and says what it would mean
# ------------------------------------------------------------------------------------------

def test_sliding_window_convention_matches_transformers():
    """Query i sees keys i - window + 1 .. i: exactly ``window`` keys, itself included."""
    from transformers.masking_utils import sliding_window_causal_mask_function
    allowed = sliding_window_causal_mask_function(WINDOW)
    n = 20
    t = torch.tensor
    theirs = np.array([[not bool(allowed(t(0), t(0), t(q), t(k))) for k in range(n)]
                       for q in range(n)])
    np.testing.assert_array_equal(causal_mask(n, WINDOW), theirs, err_msg="window edge off by one?")
    assert (~causal_mask(n, WINDOW)).sum(1).max() == WINDOW


@pytest.mark.parametrize("variant", ["mistral-window", "gemma2"])
def test_window_is_exercised_and_its_edge_matters(variant, tmp_path, monkeypatch):
    """The prompt is longer than the window, and a window one wider or narrower breaks parity."""
    folder, ids = make(tmp_path, variant), prompt()
    assert len(ids) > 2 * WINDOW
    model = ml.load(folder, dtype=np.float64)
    with monkeypatch.context() as m:
        patch_float64(m)
        ref = reference(folder, ids, torch.float64)["logits"]
    tol = F64_TOL
    assert np.abs(model.run(ids).logits - ref).max() <= tol
    for shift in (-1, +1):
        model.cfg = model.cfg.replace(
            layer_windows=tuple(w and w + shift for w in model.cfg.layer_windows))
        err = np.abs(model.run(ids).logits - ref).max()
        model.cfg = model.cfg.replace(
            layer_windows=tuple(w and w - shift for w in model.cfg.layer_windows))
        assert err > 1e3 * tol, (
            f"a window of {WINDOW + shift} should not match transformers (err {err:.2g})")


def test_gemma2_layer_types_and_scalars(tmp_path):
    cfg = ml.load(make(tmp_path, "gemma2")).cfg
    assert cfg.layer_windows == (WINDOW, None, WINDOW), "Gemma 2 slides on even layers (0, 2, ...)"
    assert cfg.attn_scale == 24 ** -0.5 and cfg.attn_softcap == 3.0 and cfg.final_softcap == 5.0
    assert cfg.sandwich_norms and cfg.embed_scale == math.sqrt(32)


def test_final_softcap_and_precap_logits(tmp_path):
    """trace.logits are capped; trace["logits_precap"] are the linear logits N(x_L) W_U that
    attribution splits."""
    trace = ml.load(make(tmp_path, "gemma2"), dtype=np.float64).run(prompt())
    cap = trace.model.cfg.final_softcap
    pre = trace["logits_precap"]
    np.testing.assert_allclose(pre, trace["normalized"] @ trace.model.params.W_U,
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(trace.logits, cap * np.tanh(pre / cap), rtol=0, atol=1e-12)
    assert np.abs(trace.logits).max() < cap < np.abs(pre).max(), (
        "the cap should bind on these logits")


def test_sandwich_norms_record_their_divisors(tmp_path):
    """Gemma 2: attn_out / mlp_out are the post-norm outputs; the recorded divisors make them
    linear."""
    trace = ml.load(make(tmp_path, "gemma2"), dtype=np.float64).run(prompt())
    w, eps = trace.model.layers[1], trace.model.cfg.norm_eps
    raw = trace["z", 1].reshape(N_SEQ, -1) @ w.W_O                  # before the post-norm
    s = trace["scale_ln1_post", 1]
    np.testing.assert_allclose(s, np.sqrt((raw ** 2).mean(-1, keepdims=True) + eps), rtol=1e-12)
    np.testing.assert_allclose(trace["attn_out", 1], raw / s * w.ln1_post_w, rtol=0, atol=1e-12)
    raw_mlp = trace["mlp_post", 1] @ w.W_out
    np.testing.assert_allclose(trace["mlp_out", 1],
                               raw_mlp / trace["scale_ln2_post", 1] * w.ln2_post_w,
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(trace["resid_post", 1], trace["resid_pre", 1] + trace["attn_out", 1]
                               + trace["mlp_out", 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemma_embedding_scale_in_the_compute_dtype(dtype, tmp_path):
    """transformers multiplies by sqrt(d_model) as a tensor of the hidden states' dtype: the same
    bits here."""
    folder, ids = make(tmp_path, "gemma"), prompt()
    trace = ml.load(folder, dtype=dtype).run(ids)
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=tdtype).eval()
    with torch.no_grad():
        theirs = ref.get_input_embeddings()(torch.tensor(ids)[None])[0].numpy()
    np.testing.assert_array_equal(trace["embed"], theirs)
    np.testing.assert_array_equal(trace["embed"],
                                  trace.model.params.W_E[ids] * dtype(math.sqrt(32)))


def test_parallel_residual_resid_mid_is_a_partial_sum(tmp_path):
    """GPT-NeoX parallel: the MLP reads resid_pre (its scale_ln2 is the norm of resid_pre, not
    resid_mid)."""
    trace = ml.load(make(tmp_path, "gpt_neox-parallel"), dtype=np.float64).run(prompt())
    cfg = trace.model.cfg
    assert cfg.parallel_residual and cfg.rope.rotary_dim == 4
    for l in range(cfg.n_layers):
        pre = trace["resid_pre", l]
        centred = pre - pre.mean(-1, keepdims=True)
        np.testing.assert_allclose(trace["scale_ln2", l],
                                   np.sqrt((centred ** 2).mean(-1, keepdims=True) + cfg.norm_eps),
                                   rtol=1e-12)
        np.testing.assert_allclose(trace["resid_mid", l], pre + trace["attn_out", l],
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(trace["resid_post", l],
                                   trace["resid_mid", l] + trace["mlp_out", l],
                                   rtol=0, atol=1e-12)


def test_unlisted_family_fails_clearly(tmp_path):
    folder = make(tmp_path, "qwen2-untied")
    cfg = (folder / "config.json").read_text().replace('"qwen2"', '"qwen2_moe"')
    (folder / "config.json").write_text(cfg)
    with pytest.raises(ml.UnsupportedModelError,
                       match="qwen2_moe.*not supported.*gemma2.*gpt_neox.*phi3"):
        ml.load(folder)


def test_longrope_is_refused(tmp_path):
    import json
    folder = make(tmp_path, "phi3")
    hf = json.loads((folder / "config.json").read_text())
    hf["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0,
                             "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ml.UnsupportedModelError, match="longrope"):
        ml.load(folder)


# ------------------------------------------------------------------------------------------
# The exact GELU's erf
# ------------------------------------------------------------------------------------------

def test_erf_matches_math_erf_on_a_dense_grid():
    """float64 erf to a few ulps of math.erf (the C library's) over the whole range, including the
    tails."""
    x = np.concatenate([np.linspace(-40, 40, 400_001), np.linspace(-1.6, 1.6, 100_001),
                        np.geomspace(1e-300, 1e-3, 1000),
                        [0.0, 1.5, -1.5, 30.0, -30.0, np.nextafter(1.5, 0), np.nextafter(30.0, 0)]])
    ours = ops.erf(x)
    theirs = np.array([math.erf(v) for v in x])
    rel = np.abs(ours - theirs) / np.maximum(np.abs(theirs), np.finfo(np.float64).tiny)
    assert rel.max() < 1e-15, f"erf relative error {rel.max():.2g} at x = {x[rel.argmax()]!r}"


def test_erf_and_gelu_keep_the_dtype():
    for dtype in (np.float32, np.float64):
        x = np.linspace(-5, 5, 101, dtype=dtype)
        assert ops.erf(x).dtype == dtype and ops.gelu(x).dtype == dtype
    x = np.linspace(-8, 8, 1001)
    np.testing.assert_allclose(ops.gelu(x), [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x],
                               # atol: both sides cancel in 1 + erf for x << 0
                               rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------------------------------
# The lens and the attribution keep their guarantees in every family
# ------------------------------------------------------------------------------------------

INVARIANT_VARIANTS = ["gpt_neox-parallel", "gpt_neox-sequential", "mistral-window", "qwen2-tied",
                      "qwen3", "gemma", "gemma2", "phi3-partial-window"]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """One float64 and one float32 trace per family, made once for the invariant tests below."""
    out = {}
    for variant in INVARIANT_VARIANTS:
        folder = make(tmp_path_factory.mktemp("inv"), variant)
        out[variant] = {dt: ml.load(folder, dtype=dt).run(prompt())
                        for dt in (np.float64, np.float32)}
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", INVARIANT_VARIANTS)
def test_lens_final_post_row_is_the_logits(variant, dtype, traces):
    """The lens's last row is the model's logits, soft-capped where the family caps them
    (Gemma 2)."""
    trace = traces[variant][dtype]
    lens = ml.logit_lens(trace, top_k=3, incl_mid=True)
    final = lens.logits("final_post")
    # Same function, same order of operations on the same numbers: equal to rounding (float32: ~1e-7
    # of the logits' size; the lens and the forward pass may block the final GEMM differently).
    tol = (1e-12 if dtype == np.float64 else 1e-5) * max(1.0, float(np.abs(trace.logits).max()))
    assert np.abs(final - trace.logits).max() <= tol, (
        "lens final_post != logits: the soft-cap or the final norm?")
    assert np.array_equal(lens.top_ids[-1, :, 0], trace.logits.argmax(-1))
    assert [f"{l}_mid" for l in range(trace.n_layers)] == [x for x in lens.labels
                                                            if x.endswith("_mid")]


@pytest.mark.parametrize("by", ["layer", "head", "neuron", "token"])
@pytest.mark.parametrize("variant", INVARIANT_VARIANTS)
def test_attribution_sums_to_the_logit(variant, by, traces):
    """The parts sum to the logit (pre-cap with a final soft-cap); the logit is the model's own."""
    trace = traces[variant][np.float64]
    cfg = trace.model.cfg
    # a target with a large (negative) logit
    pos, target = N_SEQ - 1, int(trace.logits[-1].argmin())
    layer = None if by in ("layer", "head") else cfg.n_layers - 1
    attr = ml.layer_attribution(trace, target=target, position=pos, by=by, layer=layer)
    linear_logits = trace["logits_precap"] if cfg.final_softcap else trace.logits
    assert attr.logit == pytest.approx(float(linear_logits[pos, target]), abs=1e-12)
    # float64 parts of a float64 stream: the sum differs from the logit only by summation order.
    assert abs(attr.values.sum() - attr.logit) <= 1e-10 * max(1.0, abs(attr.logit)), (
        f"{variant} by={by}: parts sum to {attr.values.sum():.12g}, logit {attr.logit:.12g}. "
        f"Gemma 2: are the sandwich norms' divisors frozen? Gemma: is embed the scaled embedding?")
    if cfg.final_softcap:  # the capped number the model reports is cap * tanh(pre-cap / cap)
        capped = cfg.final_softcap * np.tanh(attr.values.sum() / cfg.final_softcap)
        assert capped == pytest.approx(float(trace.logits[pos, target]), abs=1e-12)
        assert attr.capped_logit == float(trace.logits[pos, target]), (
            "the Attribution carries both numbers")
        assert "before the soft-cap" in repr(attr)
    else:
        assert attr.capped_logit is None


@pytest.mark.parametrize("variant", INVARIANT_VARIANTS)
def test_attribution_float32_stream_sums_to_float32_precision(variant, traces):
    trace = traces[variant][np.float32]
    attr = ml.layer_attribution(trace, target=int(trace.logits[-1].argmax()), position=-1,
                                by="head")
    assert abs(attr.values.sum() - attr.logit) <= 1e-4 * max(1.0, abs(attr.logit))
