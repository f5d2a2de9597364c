"""Property tests: random small models of every supported family, drawn by hypothesis.

Each draw is a config.json (layers, heads, KV-head ratio, d_head, biases, tied or untied
embeddings, RoPE variant and partial rotary, sliding windows, soft-caps, where the family has
them) and a random checkpoint for it, written with numpy (tests/random_checkpoints.py), so these
tests need no torch. Sequence lengths start at 1. For every draw we check:

1. the stream's identities (float64, to 1e-12: one or two additions of O(1) numbers):
   resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out, the next block reads the
   previous block's output, attention rows are probability distributions over allowed keys only;
   and, where lens.py / attribution.py exist, the lens row final_post equals the logits and the
   attribution parts sum to the logit;
2. float32 against float64: the logits agree to 2e-4 * max(1, max|logit|). float32 carries ~7
   digits; a few layers of O(1) activations lose one or two of them (measured: the worst case
   over 40 draws per family, 360 in all, was 1.0e-5 relative, on gemma2), so 2e-4 catches any
   dtype mix-up (a float16 path, a wrong cast) without flaking;
3. a batch against one sequence at a time (float64, 1e-10: BLAS may block a [batch, n_seq] product
   differently from an [n_seq] one, which changes the last bits, never more);
4. a saved-and-reloaded model: every tensor is read back with safetensors.numpy, written to a new
   folder in a different arrangement (other shard count, other offsets), and reloaded; the logits
   must be bit-identical, because minilens's reading must depend on names and values only;
5. the fast pass's recycled memory changes no number (bit-identical with model.pool = None);
6. the textbook forward pass (forward.py) records the same trace as the fast one (fast/forward.py):
   every key and the logits to 1e-12 of their scale, in float64.

Hypothesis profiles: "ci" (the default; 20 examples per family, no deadline, since a draw writes
files) keeps the whole suite well under its 10-minute budget; "thorough" (300 examples) is for a
deliberate hunt: MINILENS_HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings, strategies as st
from safetensors.numpy import load_file

import minilens as ml
from minilens import UnsupportedModelError
from minilens.config import FAMILY_READERS, ModelConfig
from minilens.fast import forward as fast_forward, workers
from random_checkpoints import gpt2_config, llama_config, save_tensors, write_checkpoint

try:
    from minilens.analysis.lens import logit_lens
except ImportError:  # lens.py not written yet
    logit_lens = None
try:
    from minilens.analysis.attribution import layer_attribution
except ImportError:
    layer_attribution = None

settings.register_profile("ci", max_examples=20, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("MINILENS_HYPOTHESIS_PROFILE", "ci"))

EXACT = 1e-12        # float64 identities: one or two additions
BATCH = 1e-10        # float64, different BLAS blocking
F32_VS_F64 = 2e-4    # relative to max(1, max|logit|), see the module docstring


# ------------------------------------------------------------------------------------------
# Drawing configs
# ------------------------------------------------------------------------------------------

@st.composite
def heads(draw, gqa=True):
    """(n_heads, n_kv_heads, d_head): KV heads divide query heads; d_head even (RoPE pairs)."""
    n_kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3)) if gqa else 1
    return n_kv * group, n_kv, draw(st.sampled_from([2, 4, 6, 8]))


@st.composite
def rope(draw, max_pos):
    """rope_parameters for one of the RoPE variants minilens implements."""
    kind = draw(st.sampled_from(["default", "linear", "dynamic", "llama3"]))
    params = {"rope_type": kind, "rope_theta": draw(st.sampled_from([100.0, 10000.0, 500000.0]))}
    if kind in ("linear", "dynamic"):
        params["factor"] = draw(st.sampled_from([1.5, 2.0, 4.0]))
    if kind == "llama3":
        params.update(factor=draw(st.sampled_from([2.0, 8.0])), low_freq_factor=1.0,
                      high_freq_factor=draw(st.sampled_from([2.0, 4.0])),
                      original_max_position_embeddings=draw(st.sampled_from([4, 16, max_pos])))
    return params


@st.composite
def llama_like(draw, model_type):
    n_heads, n_kv, d_head = draw(heads())
    # small values make dynamic RoPE rescale within the prompt
    max_pos = draw(st.sampled_from([8, 32, 256]))
    return llama_config(
        model_type=model_type, n_layers=draw(st.integers(1, 3)),
        d_model=draw(st.sampled_from([8, 16, 24])),
        n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head, d_mlp=draw(st.sampled_from([8, 20, 32])),
        d_vocab=draw(st.integers(5, 60)), tie=draw(st.booleans()), bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()), rope=draw(rope(max_pos)), max_position_embeddings=max_pos,
        architectures=[f"{model_type.capitalize()}ForCausalLM"],
    )


@st.composite
def hf_configs(draw, family):
    """A config.json dict for ``family``, in the field names that family's transformers config
    writes."""
    if family == "gpt2":
        n_heads, _, d_head = draw(heads(gqa=False))
        return gpt2_config(n_layers=draw(st.integers(1, 3)), d_model=n_heads * d_head,
                           n_heads=n_heads, d_mlp=draw(st.sampled_from([None, 8, 20])),
                           d_vocab=draw(st.integers(5, 60)),
                           n_ctx=draw(st.integers(1, 40)), tie=draw(st.booleans()),
                           act=draw(st.sampled_from(["gelu_new", "gelu", "relu"])))
    if family == "gpt_neox":
        n_heads, _, d_head = draw(heads(gqa=False))
        max_pos = draw(st.sampled_from([8, 256]))
        params = draw(rope(max_pos))
        params["partial_rotary_factor"] = draw(st.sampled_from([0.25, 0.5, 1.0]))
        assume(int(d_head * params["partial_rotary_factor"]) % 2 == 0
               and int(d_head * params["partial_rotary_factor"]))
        return {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
                "num_hidden_layers": draw(st.integers(1, 3)), "hidden_size": n_heads * d_head,
                "num_attention_heads": n_heads, "intermediate_size": draw(st.sampled_from([8, 32])),
                "vocab_size": draw(st.integers(5, 60)), "layer_norm_eps": 1e-5,
                "hidden_act": "gelu", "use_parallel_residual": draw(st.booleans()),
                "attention_bias": draw(st.booleans()),
                "tie_word_embeddings": draw(st.booleans()), "max_position_embeddings": max_pos,
                "rope_parameters": params, "bos_token_id": 0, "eos_token_id": 0}
    hf = draw(llama_like(family))
    if family == "mistral":
        hf["sliding_window"] = draw(st.sampled_from([1, 2, 5, None]))
    if family in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = draw(st.booleans())
        hf["sliding_window"] = draw(st.sampled_from([1, 3, 8]))
        hf["max_window_layers"] = draw(st.integers(0, 3))
    if family in ("gemma", "gemma2"):
        hf["hidden_activation"] = "gelu_pytorch_tanh"
        hf["tie_word_embeddings"] = draw(st.booleans())
    if family == "gemma2":
        hf["query_pre_attn_scalar"] = draw(st.sampled_from([4, 16, 256]))
        hf["attn_logit_softcapping"] = draw(st.sampled_from([None, 5.0, 50.0]))
        hf["final_logit_softcapping"] = draw(st.sampled_from([None, 3.0, 30.0]))
        hf["sliding_window"] = draw(st.sampled_from([1, 3, 8]))
    if family == "phi3":
        hf["partial_rotary_factor"] = draw(st.sampled_from([0.5, 1.0]))
        assume(int(hf["head_dim"] * hf["partial_rotary_factor"]) % 2 == 0)
        hf["sliding_window"] = draw(st.sampled_from([None, 2, 6]))
    return hf


def prompt_for(draw, cfg, n_batch=1):
    limit = min(cfg.n_ctx or 24, 24)
    n_seq = draw(st.integers(1, limit))
    ids = draw(st.lists(st.lists(st.integers(0, cfg.d_vocab - 1), min_size=n_seq, max_size=n_seq),
                        min_size=n_batch, max_size=n_batch))
    return np.array(ids, dtype=np.int64)


# ------------------------------------------------------------------------------------------
# The checks
# ------------------------------------------------------------------------------------------

def close(a, b, tol):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                        initial=0.0)) <= tol


def check_identities(model, trace):
    cfg, n = model.cfg, trace.n_seq
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    for l in range(cfg.n_layers):
        assert close(trace["resid_mid", l], trace["resid_pre", l] + trace["attn_out", l], EXACT), \
            f"layer {l}: resid_mid != resid_pre + attn_out"
        assert close(trace["resid_post", l], trace["resid_mid", l] + trace["mlp_out", l], EXACT), \
            f"layer {l}: resid_post != resid_mid + mlp_out"
        if l + 1 < cfg.n_layers:
            assert np.array_equal(trace["resid_pre", l + 1], trace["resid_post", l]), \
                f"block {l + 1} does not read block {l}'s output"
        pattern = trace["pattern", l]                   # [n_heads, n_seq, n_seq]
        assert pattern.shape == (cfg.n_heads, n, n)
        assert close(pattern.sum(-1), 1.0, 1e-12), f"layer {l}: attention rows do not sum to 1"
        assert (pattern >= 0).all()
        window = cfg.layer_windows[l] if cfg.layer_windows else None
        banned = (k > q) | ((k <= q - window) if window is not None else False)
        assert (pattern[:, banned] == 0).all(), (
            f"layer {l}: attention reads a future (or out-of-window) key")
    assert np.array_equal(trace["resid_final"], trace["resid_post", -1])
    if logit_lens is not None:
        lens = logit_lens(trace, target=int(trace.ids[-1]), top_k=1)
        final = lens.logits("final_post")
        assert close(final, trace.logits[lens.positions], 1e-9 * max(1.0, np.abs(final).max())), \
            "the lens row final_post is not the model's logits"
    if layer_attribution is not None:
        for position in {0, n - 1}:
            attr = layer_attribution(trace, target=int(trace.ids[position]), position=position)
            assert close(attr.values.sum(), attr.logit, 1e-9 * max(1.0, abs(attr.logit))), \
                f"attribution parts sum to {attr.values.sum()}, the logit is {attr.logit}"


def resave(folder: Path, out: Path, n_shards: int) -> Path:
    """Read every tensor back with safetensors.numpy and write it to a new folder, rearranged."""
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    out.mkdir()
    (out / "config.json").write_bytes((folder / "config.json").read_bytes())
    save_tensors(out, tensors, n_shards)
    return out


FAMILIES = sorted(FAMILY_READERS)


@contextlib.contextmanager
def forced_workers(n: int):
    """The fast pass and the lens in n workers whatever the size, attention in blocks of 4."""
    saved = (workers.n_workers, fast_forward.WORKER_MIN_ROWS, fast_forward.ATTENTION_BLOCK)
    workers.n_workers = lambda: n
    fast_forward.WORKER_MIN_ROWS, fast_forward.ATTENTION_BLOCK = 0, 4
    try:
        yield
    finally:
        workers.n_workers, fast_forward.WORKER_MIN_ROWS, fast_forward.ATTENTION_BLOCK = saved


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_random_models_keep_their_invariants(family, data):
    hf = data.draw(hf_configs(family), label="config.json")
    store = data.draw(st.sampled_from([np.float32, np.float16]), label="stored dtype")
    n_shards = data.draw(st.integers(1, 3), label="shards")
    if hf.get("rope_parameters", {}).get("rope_type") == "dynamic":
        # minilens refuses dynamic RoPE on a 2-dim rotation (its formula divides by dim - 2): not a
        # valid draw
        try:
            ModelConfig.from_hf(hf)
        except UnsupportedModelError as e:
            assert "dynamic RoPE needs a rotary dimension above 2" in str(e)
            assume(False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_checkpoint(Path(tmp) / "model", hf, seed=data.draw(st.integers(0, 2**16)),
                                  dtype=store, n_shards=n_shards)
        m64 = ml.load(folder, dtype=np.float64, check_finite=True)
        m32 = ml.load(folder)
        note(repr(m64.cfg))
        batch = prompt_for(data.draw, m64.cfg, n_batch=data.draw(st.integers(1, 3), label="batch"))

        # 1. identities, float64
        trace = m64.run(batch[0])
        check_identities(m64, trace)
        assert np.isfinite(trace.logits).all()

        # 2. float32 against float64
        logits32 = m32(batch[0])
        assert logits32.dtype == np.float32
        scale = max(1.0, float(np.abs(trace.logits).max()))
        assert close(logits32, trace.logits, F32_VS_F64 * scale), (
            f"float32 and float64 logits differ by {np.abs(logits32 - trace.logits).max():.3g} "
            f"(scale {scale:.3g})")

        # 3. a batch against one sequence at a time
        for b, batched in enumerate(m64.run_batch(batch)):
            alone = m64.run(batch[b])
            assert close(batched.logits, alone.logits, BATCH * scale), (
                f"batch row {b} differs from running it alone")
            assert close(batched["resid_pre", -1], alone["resid_pre", -1], BATCH * scale)

        # 4. saved and reloaded: bit-identical
        again = ml.load(resave(folder, Path(tmp) / "again", n_shards=1 + n_shards % 3))
        assert np.array_equal(again(batch[0]), logits32), (
            "a re-saved copy of the checkpoint gives other numbers")

        # 5. the model's pool of recycled memory (memory.py) changes no number: bit-identical
        #    without it
        pooled = m32.run(batch[0])
        m32.pool = None
        plain = m32.run(batch[0])
        for key in plain.keys():
            assert np.array_equal(pooled[key], plain[key]), (
                f"{key} differs when written into the pool's memory")

        # 6. the textbook forward pass (forward.py) and the fast one (fast/forward.py) record the
        #    same trace: every key and the logits to 1e-12 of each key's scale, in float64 (the
        #    two order their sums differently: blocked softmax, in-place norms; never more than
        #    rounding)
        fast = m64.run(batch[0])
        m64.fast = False
        textbook = m64.run(batch[0])
        assert sorted(map(str, fast.keys())) == sorted(map(str, textbook.keys())), (
            "the two passes record other keys")
        for key in textbook.keys():
            ref = np.asarray(textbook[key], np.float64)
            err = (float(np.abs(fast[key] - ref).max(initial=0.0))
                   / max(1.0, float(np.abs(ref).max(initial=0.0))))
            assert err <= EXACT, (
                f"{key}: fast/forward.py differs from forward.py by {err:.3g} relative")
        assert close(fast.logits, textbook.logits, EXACT * scale), (
            "logits: fast and textbook passes differ")

        # 7. the fast pass's work shared among three workers (fast/workers.py: rows, and blocks
        #    of 4 queries dealt out) records the same trace as one worker, for one sequence and
        #    for a batch
        m64.fast = True
        with forced_workers(3):
            shared = m64.run(batch[0])
            shared_batch = m64.run_batch(batch)
        for key in fast.keys():
            ref = np.asarray(fast[key], np.float64)
            err = (float(np.abs(shared[key] - ref).max(initial=0.0))
                   / max(1.0, float(np.abs(ref).max(initial=0.0))))
            assert err <= EXACT, f"{key}: three workers differ from one by {err:.3g} relative"
        for b, batched in enumerate(shared_batch):
            assert close(batched.logits, m64.run(batch[b]).logits, BATCH * scale), (
                f"batch row {b} differs in three workers from one")
