"""The causal mask is built once per forward pass, per distinct sliding window (issue 18, item 8).

It was built as an [n_seq, n_seq] array in every layer: 34 MB per layer at 6,000 tokens as a
bool (fast/forward.py), four times that as float32 (forward.py). These tests count the masks each
forward pass builds. That sharing them changed no number is tests/test_fast_paths.py's and
tests/test_families.py's to check (every key, every family, against the textbook and transformers).
"""

from __future__ import annotations

import numpy as np
import pytest

import minilens as ml
import minilens.fast.forward as fast_forward
import minilens.forward as textbook_forward
from random_checkpoints import llama_config, write_checkpoint

N_LAYERS = 4


def family_config(family: str) -> dict:
    """4 layers: no window (llama), one window for all (mistral), alternating (gemma2)."""
    if family == "llama":
        return llama_config(n_layers=N_LAYERS)
    if family == "mistral":
        return llama_config(n_layers=N_LAYERS, model_type="mistral", sliding_window=3,
                            architectures=["MistralForCausalLM"])
    return llama_config(n_layers=N_LAYERS, model_type="gemma2", sliding_window=3,
                        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=8,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                        architectures=["Gemma2ForCausalLM"])


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "textbook"])
@pytest.mark.parametrize("family, n_windows", [("llama", 1), ("mistral", 1), ("gemma2", 2)])
def test_the_causal_mask_is_built_once_per_window(tmp_path, monkeypatch, family, n_windows, fast):
    """Finding: the causal mask was built as an [n, n] bool array for every layer (34 MB per layer
    at 6,000 tokens)."""
    model = ml.load(write_checkpoint(tmp_path / family, family_config(family)), fast=fast)
    windows = set(model.cfg.layer_windows)
    assert len(windows) == n_windows, f"the {family} test model has windows {windows}"
    module = fast_forward if fast else textbook_forward
    built = []
    real = module.causal_mask

    def counting(n_seq, window, *dtype):
        built.append(window)
        return real(n_seq, window, *dtype)

    monkeypatch.setattr(module, "causal_mask", counting)
    ids = np.arange(1, 20) % model.cfg.d_vocab
    model(ids)
    assert sorted(built, key=str) == sorted(windows, key=str), (
        f"{len(built)} masks built for {N_LAYERS} layers and {n_windows} distinct window(s)")
