"""Generation: the context limit, and the KV cache against re-running the whole sequence.

The cache (minilens/generate.py) runs each new token through forward.py alone and answers its k
and v with the cached ones. The reference is ``model(ids)[-1]``: the whole sequence run again,
by the default (fast) forward pass. In float64 the two agree to rounding (1e-9 of the logits'
scale allows for a different order of summation in the matrix products over a few dozen
positions); the tokens must be equal.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens.errors import InputError
from minilens.generate import KVCache, context_limit, greedy
from random_checkpoints import gpt2_config, llama_config, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_GPT2 = ROOT / "weights" / "shakespeare-gpt2"


# ------------------------------------------------------------------------------------------
# Random checkpoints of every kind of attention and position the cache must handle
# ------------------------------------------------------------------------------------------

def gpt_neox_config(**extra) -> dict:
    return {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
            "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
            "intermediate_size": 48, "vocab_size": 101, "layer_norm_eps": 1e-5,
            "hidden_act": "gelu", "use_parallel_residual": True, "attention_bias": True,
            "tie_word_embeddings": False, "max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "partial_rotary_factor": 0.5},
            "bos_token_id": 0, "eos_token_id": 0, **extra}


FAMILIES = {
    # learned positions: the cache answers pos_embed with W_pos[p]
    "gpt2": gpt2_config(n_ctx=64),
    # RoPE and grouped-query attention (2 query heads per key-value head)
    "llama-gqa": llama_config(n_kv_heads=2),
    # a sliding window of 3, much shorter than the sequence: the cache keeps the last 3 keys
    "mistral-window": llama_config(model_type="mistral", n_kv_heads=2, sliding_window=3),
    # Qwen3: RMSNorm on each head's q and k before RoPE
    "qwen3": llama_config(model_type="qwen3", n_kv_heads=2, head_dim=16),
    # Gemma 2: sandwich norms, soft-capped scores and logits, sliding layers (0) and full (1)
    "gemma2": llama_config(model_type="gemma2", n_kv_heads=2, head_dim=16, sliding_window=4,
                           query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
                           final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh"),
    # partial rotary (half of d_head rotates) and a parallel residual
    "gpt_neox": gpt_neox_config(),
    # Llama 3 rope scaling: the frequencies rescaled, each position's own
    "llama3-rope": llama_config(rope={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request, tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp(request.param), FAMILIES[request.param],
                              seed=3)
    return request.param, ml.load(folder, dtype=np.float64)


def prompt(n: int, d_vocab: int = 101, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, d_vocab, size=n).astype(np.int64)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------------------
# The cache equals the whole sequence run again
# ------------------------------------------------------------------------------------------

def test_each_cached_step_equals_a_full_run(family_model):
    """Step by step, the logits from the cache equal model(ids)[-1] (float64), past the sliding
    windows and through 30 positions of RoPE rotated by the cache."""
    name, model = family_model
    ids = prompt(7)
    cache = KVCache(model)
    for step in range(30):
        cached, full = cache.last_logits(ids), model(ids)[-1]
        err = relative_error(cached, full)
        assert err < 1e-9, (f"{name}, step {step} ({len(ids)} tokens): the cached logits are "
                            f"{err:.1e} off a full run. Is the new token put at its position "
                            f"(W_pos[p], RoPE by p), and does the window keep the last keys?")
        ids = np.append(ids, int(full.argmax()))


def test_cached_tokens_equal_uncached_tokens(family_model):
    name, model = family_model
    ids = prompt(5, seed=1)
    cached = model.generate(ids, 40)
    uncached = model.generate(ids, 40, kv_cache=False)
    assert cached.tolist() == uncached.tolist(), f"{name}: the KV cache changed the tokens"
    assert len(cached) == 45 and cached[:5].tolist() == ids.tolist()


def test_a_float32_model_gives_the_same_tokens_cached(tmp_path):
    model = ml.load(write_checkpoint(tmp_path / "m", llama_config(n_kv_heads=2), seed=5))
    ids = prompt(6, seed=2)
    assert model.generate(ids, 30).tolist() == model.generate(ids, 30, kv_cache=False).tolist()


def test_dynamic_rope_past_its_limit_runs_without_the_stale_cache(tmp_path, monkeypatch):
    """Dynamic NTK RoPE changes every position's frequencies once the sequence outgrows
    max_position_embeddings, so the cached keys go stale there (a cache stepped past the limit is
    visibly off a full run); greedy re-runs the sequence instead, and its tokens equal the
    uncached ones."""
    hf = llama_config(rope={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=10)
    model = ml.load(write_checkpoint(tmp_path / "m", hf, seed=4), dtype=np.float64)
    ids = prompt(10, seed=3)
    stale = KVCache(model)
    stale.last_logits(ids[:-1])
    assert relative_error(stale.last_logits(np.append(ids, 0)[:-1]), model(ids)[-1]) < 1e-9
    assert relative_error(stale.last_logits(np.append(ids, 0)), model(np.append(ids, 0))[-1]) > 1e-3
    ran = []
    real = KVCache.last_logits
    monkeypatch.setattr(KVCache, "last_logits", lambda self, ids: ran.append(len(ids))
                        or real(self, ids))
    ids = ids[:4]
    cached = model.generate(ids, 16, past_context=True)
    assert max(ran) == 10, "past max_position_embeddings the cache must not be used"
    assert len(cached) == 20, "past_context=True goes past the 10 positions"
    assert cached.tolist() == model.generate(ids, 16, past_context=True, kv_cache=False).tolist()


def test_run_stays_stateless(tmp_path):
    """The cache lives in one call of generate: the model gains no state, and a run after
    generating equals a run before."""
    model = ml.load(write_checkpoint(tmp_path / "m", llama_config(), seed=6))
    ids = prompt(8, seed=4)
    before, attributes = model(ids), set(vars(model))
    model.generate(ids, 10)
    assert set(vars(model)) == attributes
    np.testing.assert_array_equal(model(ids), before)


# ------------------------------------------------------------------------------------------
# The context limit
# ------------------------------------------------------------------------------------------

def test_gpt2_stops_at_its_learned_positions_and_the_result_still_runs(tmp_path):
    """The bug of issue 17: generate returned one id past n_positions, so the next step (and
    decoding it in the CLI) failed. Now the sequence ends exactly at n_positions."""
    model = ml.load(write_checkpoint(tmp_path / "m", gpt2_config(n_ctx=16), seed=7))
    ids = prompt(5, seed=5)
    with pytest.warns(UserWarning, match=r"after 11 of 30 new tokens.*16 positions.*learned"):
        out = model.generate(ids, 30)
    assert len(out) == 16 == context_limit(model.cfg)
    model.run(out)                        # all 16 have positions
    with pytest.warns(UserWarning, match="learned positions end there"):
        assert len(model.generate(ids, 30, past_context=True)) == 16, (
            "learned positions have no position 16, whatever past_context says")


def test_a_rotary_model_stops_at_max_position_embeddings_unless_past_context(tmp_path):
    model = ml.load(write_checkpoint(tmp_path / "m", llama_config(max_position_embeddings=12),
                                     seed=8))
    ids = prompt(4, seed=6)
    with pytest.warns(UserWarning, match=r"after 8 of 20 .*12 positions.*past_context=True"):
        assert len(model.generate(ids, 20)) == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")    # no warning when all 20 are made
        assert len(model.generate(ids, 20, past_context=True)) == 24


def test_a_gguf_file_stops_at_its_context_length(tmp_path, capsys):
    """A GGUF file's limit is its context_length metadata, which info names."""
    from gguf_factories import hf_to_gguf
    from minilens.show import cli
    folder = write_checkpoint(tmp_path / "hf", llama_config(max_position_embeddings=12), seed=11)
    path = hf_to_gguf(folder, tmp_path / "gguf" / "m.gguf")
    model = ml.load(path)
    assert context_limit(model.cfg) == 12
    with pytest.warns(UserWarning, match="12 positions"):
        assert len(model.generate(prompt(4), 20)) == 12
    assert cli.main(["info", "--model", str(path)]) == 0
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert fields["context"] == ("12 positions (rotary; context_length in the GGUF file): "
                                 "generate stops there unless --past-context")


def test_greedy_makes_nothing_it_is_not_asked_for(tmp_path, monkeypatch):
    """The generator computes the next token only when it is asked for it."""
    model = ml.load(write_checkpoint(tmp_path / "m", llama_config(), seed=9))
    calls = []
    real = KVCache.last_logits

    def counted(self, ids):
        calls.append(len(ids))
        return real(self, ids)

    monkeypatch.setattr(KVCache, "last_logits", counted)
    made = greedy(model, prompt(3), cache=True)
    assert calls == []
    next(made), next(made)
    assert calls == [3, 4]


@pytest.mark.parametrize("bad", [2.5, -1, "3", True, None])
def test_n_new_must_be_an_int_of_at_least_0(tmp_path, bad):
    model = ml.load(write_checkpoint(tmp_path / "m", llama_config(), seed=10))
    with pytest.raises(InputError, match="n_new"):
        model.generate(prompt(3), bad)


def test_n_new_0_returns_the_input(tmp_path):
    model = ml.load(write_checkpoint(tmp_path / "m", llama_config(), seed=10))
    assert model.generate(prompt(3), 0).tolist() == prompt(3).tolist()


# ------------------------------------------------------------------------------------------
# The command line on the shipped GPT-2: the crash of issue 17
# ------------------------------------------------------------------------------------------

def test_cli_generate_on_gpt2_stops_at_256_tokens_with_one_line_on_stderr():
    """`minilens generate "To be" -n 300 --model weights/shakespeare-gpt2` crashed at the
    context limit. It now writes the 256-token text and says on stderr why it stopped."""
    p = subprocess.run([sys.executable, "-m", "minilens", "generate", "To be", "-n", "300",
                        "--model", str(SHIPPED_GPT2)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "stopped at 256 tokens" in lines[0] and "n_positions" in lines[0], lines[0]
    model = ml.load(SHIPPED_GPT2)
    ids = model.to_tokens("To be")
    with pytest.warns(UserWarning):
        full = model.generate(ids, 300)
    assert len(full) == 256
    expected = model.decode(full)
    assert p.stdout == "To be" + expected[len(model.decode(ids)):] + "\n"


# ------------------------------------------------------------------------------------------
# The real model: 50 new tokens on SmolLM2, cached and not
# ------------------------------------------------------------------------------------------

def test_smollm2_50_new_tokens_cached_equal_uncached():
    from _real_model import smollm2_path
    smollm2_path()                        # skips (or fails in CI) when it is not fetched
    model = ml.load("smollm2")
    ids = model.to_tokens("The Eiffel Tower is located in the city of")
    cached = model.generate(ids, 50)
    uncached = model.generate(ids, 50, kv_cache=False)
    assert len(cached) == len(ids) + 50
    assert cached.tolist() == uncached.tolist(), (
        f"the first difference is at new token "
        f"{int(np.flatnonzero(cached != uncached)[0]) - len(ids)}")
