"""Parity: minilens computes the numbers transformers computes, on checkpoints transformers saved.

For every variant we compare, at every position:
- ``hidden_states[l]`` (transformers) with ``trace["resid_pre", l]`` for every layer l;
- ``hidden_states[-1]``, which for GPT-2 and Llama is already through the final norm, with
  ``trace["normalized"]``;
- the logits.

Tolerances and why:
- **float64, 1e-9.** In float64 the rounding error of a few tiny layers is ~1e-15; 1e-9 leaves six
  orders of magnitude of room and still catches any wrong formula (a misplaced eps, a wrong RoPE
  pairing or GQA grouping gives errors of order 1e-3 or more). It needs a reference that really
  computes in float64. GPT-2 in transformers is float64-clean. Stock Llama is not: its RMSNorm
  upcasts to float32 and its rotary tables (inv_freq, cos, sin) are built in float32 even inside a
  float64 model, which sets a floor near 1e-7. So we patch those two steps of the reference with
  float64 formulas written here, from the papers (not from minilens), and require 1e-9 against the
  patched reference. Against stock we require 1e-6 x max(1, max |reference|), per quantity:
  stock's float32 norm and tables round at ~6e-8 *relative* to the values, so its floor scales with
  them (our random weights give logits up to ~10 and absolute stock errors up to ~3e-6; relative,
  they stay below ~3e-7).
- **float32, 1e-4 x max(1, max |reference logit|).** Both sides round to float32 (relative error
  ~6e-8 per operation), summing in different orders (BLAS blocking, torch's threaded
  reductions). Errors grow with the size of the numbers, hence relative to the largest reference
  logit; 1e-4 relative leaves margin for ~1e3 accumulated roundings while a real bug is O(1).
  Residuals use the same rule with their own largest value.

Prompts are 48 tokens: a wrong RoPE layout can agree for the first few positions.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from _torch import import_torch

torch, transformers = import_torch()

from transformers.models.llama import modeling_llama  # noqa: E402

import minilens as ml  # noqa: E402
from factories import (  # noqa: E402
    assert_within as assert_within_hint,
    load_reference,
    make_gpt2,
    make_llama,
    parity_errors as errors,
    prompt,
    to_hub_dialect,
)

N_SEQ = 48
F64_TOL = 1e-9
F64_STOCK_LLAMA_TOL = 1e-6
F32_REL_TOL = 1e-4

# llama3 rope whose middle band is populated: head_dim 8, theta 1e4 gives wavelengths
# 2*pi*10^(0, 1, 2, 3) = 6.3, 63, 628, 6283; with original_max_position_embeddings 64 the
# thresholds are 64/4 = 16 and 64/1 = 64, so 63 lies strictly in the band, 6.3 below, 628+ above.
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# name -> (factory, keyword arguments)
VARIANTS = {
    "gpt2": (make_gpt2, {}),
    "gpt2-untied": (make_gpt2, {"tie_word_embeddings": False}),
    "llama-mha-untied": (make_llama, {}),
    "llama-gqa-8q-2kv": (make_llama, {"d_model": 64, "n_heads": 8, "n_kv_heads": 2}),
    "llama-tied": (make_llama, {"tie_word_embeddings": True}),
    "llama-bias": (make_llama, {"attention_bias": True, "mlp_bias": True}),
    "llama-d_head-16": (make_llama, {"n_heads": 4, "n_kv_heads": 2, "d_head": 16}),
    "llama-rope-llama3": (make_llama, {"d_head": 8, "n_heads": 4, "rope": LLAMA3}),
    "llama-rope-linear": (make_llama, {"rope": {"rope_type": "linear", "factor": 2.5}}),
    # dynamic NTK only changes anything beyond max_position_embeddings: the prompt is longer.
    "llama-rope-dynamic": (make_llama, {"rope": {"rope_type": "dynamic", "factor": 2.0},
                                        "max_position_embeddings": 32}),
    "llama-bf16": (make_llama, {"dtype": "bfloat16", "n_kv_heads": 2}),
    "llama-f16": (make_llama, {"dtype": "float16"}),
    "gpt2-bf16": (make_gpt2, {"dtype": "bfloat16"}),
    "llama-sharded": (make_llama, {"shard": True, "n_kv_heads": 2}),
    "gpt2-sharded": (make_gpt2, {"shard": True}),
}


# ------------------------------------------------------------------------------------------
# A float64 reference for Llama: RMSNorm and rotary tables computed in float64, from the papers
# ------------------------------------------------------------------------------------------

def rms_norm_float64(self, x):
    """Zhang & Sennrich 2019: gamma * x / sqrt(mean(x^2) + eps), with no float32 detour."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def llama3_scale(freqs, factor, low_freq_factor, high_freq_factor, old_context_len):
    """Meta's ``apply_scaling`` (llama-models, Llama 3.1), one frequency at a time, in float64."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    new_freqs = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = ((old_context_len / wavelen - low_freq_factor)
                      / (high_freq_factor - low_freq_factor))
            new_freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return new_freqs


def inv_freq_float64(config, seq_len: int) -> "torch.Tensor":
    """theta^(-2i/d) for i < d/2 (Su et al. 2021), rescaled per rope type, in float64."""
    p = config.rope_parameters
    kind, theta, dim = p["rope_type"], p["rope_theta"], config.head_dim
    if kind == "dynamic" and seq_len > config.max_position_embeddings:
        # Dynamic NTK (bloc97/emozilla): grow the base with the sequence length.
        factor = p["factor"]
        theta = theta * ((factor * seq_len / config.max_position_embeddings - (factor - 1))
                         ** (dim / (dim - 2)))
    freqs = [1.0 / theta ** (2 * i / dim) for i in range(dim // 2)]
    if kind == "linear":
        freqs = [f / p["factor"] for f in freqs]        # positions divided by the factor
    elif kind == "llama3":
        freqs = llama3_scale(freqs, p["factor"], p["low_freq_factor"], p["high_freq_factor"],
                             p["original_max_position_embeddings"])
    else:
        assert kind in ("default", "dynamic"), (
            f"rope_type {kind!r}: the float64 reference knows default, linear, dynamic and llama3 "
            "only; write its frequencies here, from the paper, before testing it")
    return torch.tensor(freqs, dtype=torch.float64)


def rotary_float64(self, x, position_ids):
    """cos and sin of position * frequency in float64, half-split layout (as HF's rotate_half
    expects)."""
    inv_freq = inv_freq_float64(self.config, int(position_ids.max()) + 1)
    angles = position_ids[..., None].to(torch.float64) * inv_freq  # [batch, n_seq, d_head / 2]
    emb = torch.cat((angles, angles), dim=-1)                       # [batch, n_seq, d_head]
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


# ------------------------------------------------------------------------------------------
# Running both sides
# ------------------------------------------------------------------------------------------

def reference(folder, ids, dtype: str) -> dict:
    """transformers' hidden states and logits on ids [n_seq], as float64 numpy."""
    model = load_reference(folder, dtype)
    with torch.no_grad():
        out = model(torch.tensor(ids)[None], output_hidden_states=True)
    hidden = [h[0].double().numpy() for h in out.hidden_states]
    return {"resid_pre": hidden[:-1], "normalized": hidden[-1],
            "logits": out.logits[0].double().numpy()}



HINT = ("If resid_pre 0 is already off, suspect the embedding (or W_pos); "
        "if a later layer first, that block "
        "(norm eps inside the sqrt? RoPE half-split pairing? GQA h // group?); "
        "if only normalized/logits, the final norm or a tied/untied W_U.")


def assert_within(errs: dict, tol: float, what: str) -> None:
    assert_within_hint(errs, tol, what, HINT)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "textbook"])
def test_parity(variant, fast, tmp_path, monkeypatch):
    factory, kwargs = VARIANTS[variant]
    folder, _ = factory(tmp_path, **kwargs)
    ids = prompt(N_SEQ)
    is_llama = factory is make_llama

    ours64 = ml.load(folder, dtype=np.float64, fast=fast).run(ids)
    ours32 = ml.load(folder, fast=fast).run(ids)
    assert ours64.logits.dtype == np.float64 and ours32.logits.dtype == np.float32, (
        "dtype silently changed")

    stock64 = errors(ours64, reference(folder, ids, "float64"), relative=is_llama)
    f32 = errors(ours32, reference(folder, ids, "float32"), relative=True)
    if is_llama:
        assert_within(stock64, F64_STOCK_LLAMA_TOL,
                      f"{variant} float64 vs stock transformers (float32 norm/rope), relative")
        with monkeypatch.context() as m:
            m.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm_float64)
            m.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", rotary_float64)
            patched_ref = reference(folder, ids, "float64")
        patched64 = errors(ours64, patched_ref)
        # The patch must really change the reference, or this test proves nothing beyond stock.
        stock_logits = reference(folder, ids, "float64")["logits"]
        assert np.abs(stock_logits - patched_ref["logits"]).max() > 0, (
            "the float64 patch did not take effect")
        assert_within(patched64, F64_TOL, f"{variant} float64 vs float64-patched transformers")
    else:
        patched64 = stock64
        assert_within(stock64, F64_TOL, f"{variant} float64 vs transformers")
    assert_within(f32, F32_REL_TOL, f"{variant} float32 vs transformers float32 (relative)")
    print(f"\nPARITY {variant}: float64 {max(patched64.values()):.2e} "
          f"(logits {patched64['logits']:.2e})"
          f"{f'; vs stock relative {max(stock64.values()):.2e}' if is_llama else ''}; "
          f"float32 relative {max(f32.values()):.2e}")


def test_llama3_middle_band_is_populated():
    """The llama3 variant above must exercise the interpolated band, or it proves nothing about
    it."""
    d_head, theta, original = 8, LLAMA3["rope_theta"], LLAMA3["original_max_position_embeddings"]
    wavelen = [2 * math.pi * theta ** (2 * i / d_head) for i in range(d_head // 2)]
    high = original / LLAMA3["high_freq_factor"]
    low = original / LLAMA3["low_freq_factor"]
    assert any(high < w < low for w in wavelen), (
        f"no wavelength strictly inside ({high}, {low}): {wavelen}")
    assert any(w < high for w in wavelen) and any(w > low for w in wavelen), (
        "all three regimes should appear")


def test_dynamic_rope_prompt_exceeds_trained_context():
    _, kwargs = VARIANTS["llama-rope-dynamic"]
    assert N_SEQ > kwargs["max_position_embeddings"], (
        "dynamic NTK is the identity within the trained context")


def test_shards_really_are_several(tmp_path):
    folder, _ = make_llama(tmp_path, shard=True)
    assert (folder / "model.safetensors.index.json").is_file(), (
        "shard=True wrote no model.safetensors.index.json: did the factory's max_shard_size "
        "exceed the checkpoint, so save_pretrained wrote one file?")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1, (
        "shard=True wrote a single model-*-of-*.safetensors: the sharded variants test nothing")
    assert len(ml.load(folder).files) > 1, (
        "the loader read one file of a sharded checkpoint: does it follow the index's "
        "weight_map to every shard?")


# ------------------------------------------------------------------------------------------
# Both config.json dialects describe the same model
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rope, type_key", [
    (None, "rope_type"),                                                     # rope_scaling: null
    ({"rope_type": "linear", "factor": 2.5}, "type"),                        # the older key
    (LLAMA3, "rope_type"),
    ({"rope_type": "dynamic", "factor": 2.0}, "type"),
])
def test_hub_dialect_reads_the_same(rope, type_key, tmp_path):
    folder, _ = make_llama(tmp_path, rope=rope, max_position_embeddings=32)
    hub = tmp_path / "hub"
    shutil.copytree(folder, hub)
    hf = to_hub_dialect(hub, type_key=type_key)
    assert "rope_parameters" not in hf and "rope_theta" in hf and hf["head_dim"] is None, (
        "to_hub_dialect should leave rope_theta at the top, no rope_parameters and head_dim "
        f"null, as hub configs have: {hf}")
    if rope is not None:
        assert hf["rope_scaling"][type_key] == rope["rope_type"], (
            f"to_hub_dialect's rope_scaling[{type_key!r}] is {hf['rope_scaling'].get(type_key)!r}, "
            f"not {rope['rope_type']!r}: the rope type was not written under {type_key!r}")

    a, b = ml.load(folder, dtype=np.float64), ml.load(hub, dtype=np.float64)
    assert a.cfg == b.cfg, f"the two dialects read differently:\n{a.cfg}\n{b.cfg}"
    ids = prompt(N_SEQ)
    np.testing.assert_array_equal(a.run(ids).logits, b.run(ids).logits, err_msg=(
        "equal configs but different logits: does the loader read something besides the "
        "config from config.json (rope_scaling vs rope_parameters)?"))


def test_llama3_original_context_falls_back_to_max_position_embeddings(tmp_path):
    """A hub llama3 rope_scaling without original_max_position_embeddings uses
    max_position_embeddings."""
    folder, _ = make_llama(tmp_path, rope=LLAMA3,
                           max_position_embeddings=LLAMA3["original_max_position_embeddings"])
    hub = tmp_path / "hub"
    shutil.copytree(folder, hub)
    hf = to_hub_dialect(hub)
    del hf["rope_scaling"]["original_max_position_embeddings"]
    (hub / "config.json").write_text(__import__("json").dumps(hf))
    assert ml.load(hub).cfg == ml.load(folder).cfg, (
        "llama3 rope_scaling without original_max_position_embeddings should fall back to "
        "max_position_embeddings, as transformers does")


# ------------------------------------------------------------------------------------------
# End to end: greedy generation
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factory, kwargs", [(make_gpt2, {}), (make_llama, {"n_kv_heads": 2}),
                                             (make_llama, {"rope": LLAMA3, "d_head": 8})],
                         ids=["gpt2", "llama-gqa", "llama-llama3"])
def test_greedy_generation_matches_transformers(factory, kwargs, tmp_path):
    """20 greedy tokens, in float64 on both sides so that no near-tie can flip an argmax."""
    folder, _ = factory(tmp_path, **kwargs)
    ids = prompt(12, seed=1)
    ours = ml.load(folder, dtype=np.float64).generate(ids, 20)
    ref = load_reference(folder, "float64")
    # random weights may well pick "EOS": keep going, as we do
    ref.generation_config.eos_token_id = None
    with torch.no_grad():
        theirs = ref.generate(torch.tensor(ids)[None], do_sample=False, max_new_tokens=20,
                              pad_token_id=0)[0].numpy()
    assert len(ours) == len(ids) + 20, (
        f"generate(ids, 20) returned {len(ours)} tokens, not the prompt's {len(ids)} + 20: "
        "does it stop at an EOS, or return only the new tokens?")
    np.testing.assert_array_equal(ours, theirs, err_msg="greedy continuations diverge")
