"""The seed's API (shared/seed/LogitLens.md): its example runs with only the imports
changed."""
import json

import numpy as np
import pytest

from _torch import import_torch

torch, transformers = import_torch()

import minilens as ml  # noqa: E402
from minilens.course.bench import (  # noqa: E402
    BaseInterpretabilityBench,
    HookedAutoConfig,
    HookedAutoModel,
    LogitLens,
)


def test_the_seed_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example logs to ./experiments
    # ---- the seed's example, verbatim except for the imports (and a noqa on its long lines) ----
    config = HookedAutoConfig(name="llama") # keep default values for other args
    model = HookedAutoModel(config)

    input_ids = torch.randint(0, 50256, (1, 50)) # generate some random tokens(replace with your ids)  # noqa: E501

    # Derive from BaseInterpretabilityBench
    class MIExperiment(BaseInterpretabilityBench):
       def __init__(self, model, save_dir="experiments"):
          super().__init__(model, save_dir)

    exp = MIExperiment(model) # create an `exp` object.

    @exp.use_tools("logit_lens") # the tool name to be used.
    def test_logit_lens(input_ids, target_idx, layer_idx, logit_lens): # same as tool name, extra arg is passed.  # noqa: E501
       ll = logit_lens.logit_lens(input_ids, target_idx, layer_idx)
       la = logit_lens.layer_attributions(input_ids, target_idx)
       return {
          "logit_lens": ll,
          "layer_attributions": la
       }

    # Driver code, call the function based on whatever arguments you want!
    result = test_logit_lens(input_ids, 0, 0) # one such example. Change as needed!
    # ---- end of the example ----
    ll, la = result["logit_lens"], result["layer_attributions"]
    trace = model.run(input_ids.numpy())
    assert ll.logits.shape == (50, 50257) and ll.row == "1_pre"
    np.testing.assert_array_equal(ll.logits, ml.logit_lens(trace).logits("1_pre"))
    assert abs(la.values.sum() - float(trace.logits[-1, 0])) < 1e-4 and la.by == "layer"
    tok = ll.token_contributions
    assert tok.labels[-1] == "rest" and len(tok.values) == 50 + 2
    (log,) = (tmp_path / "experiments").iterdir()
    record = json.loads(log.read_text())
    assert record["function"] == "test_logit_lens" and record["arguments"]["target_idx"] == 0
    assert record["arguments"]["input_ids"] == input_ids.tolist()
    assert record["result"]["layer_attributions"]["values"] == la.values.tolist()
    assert "logit_lens.layer_attributions" in record["source"] and record["seconds"] > 0
    test_logit_lens(input_ids, 0, 3)  # the last layer works (the seed's crashed there)
    assert len(list((tmp_path / "experiments").iterdir())) == 2, (
        "a second run must not overwrite the first")


def test_logit_lens_tool_reads_after_the_layer_and_the_last_layer_is_the_output():
    model = HookedAutoModel(HookedAutoConfig("gpt2", n_layer=2))
    tool = LogitLens(model)
    ids = np.arange(10, 20)
    last = tool.logit_lens(ids, 7, -1)
    trace = model.run(ids)
    assert last.row == "final_post"
    np.testing.assert_allclose(last.logits, trace.logits, atol=1e-6 * np.abs(trace.logits).max())
    assert last.target_rank.tolist() == (trace.logits > trace.logits[:, [7]]).sum(1).tolist()
    assert (tool.layer_attribution is not None
            and LogitLens.layer_attributions is LogitLens.layer_attribution)


def test_config_overrides_and_from_pretrained(tmp_path):
    config = HookedAutoConfig("gpt2", n_layer=1, n_embd=32)
    assert config.cfg.n_layers == 1 and config.cfg.d_vocab == 50257
    with pytest.raises(ml.InputError, match="no field 'num_layers'"):
        HookedAutoConfig("llama", num_layers=2)
    with pytest.raises(ml.InputError, match="'llama', 'gpt2'"):
        HookedAutoConfig("bert")
    a, b = HookedAutoModel(config), HookedAutoModel(config)
    np.testing.assert_array_equal(a([1, 2, 3]), b([1, 2, 3]))  # fixed seed
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2,
                                                              vocab_size=64))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert HookedAutoModel.from_pretrained(tmp_path).cfg.d_vocab == 64


def test_bench_errors_are_clear(tmp_path):
    model = HookedAutoModel(HookedAutoConfig("gpt2", n_layer=1))
    exp = BaseInterpretabilityBench(model, save_dir=tmp_path)
    with pytest.raises(ml.InputError, match="available tools: logit_lens"):
        exp.use_tools("logit_lense")
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = BaseInterpretabilityBench(model, save_dir=blocker / "sub")

    @bad.use_tools("logit_lens")
    def run(ids, logit_lens):
        return logit_lens.layer_attribution(ids, 1)

    with pytest.raises(ml.InputError, match="save_dir"):
        run([1, 2])
    with pytest.raises(ml.InputError, match="out of range"):
        # ids beyond d_vocab: an error, never a wrap
        LogitLens(model).layer_attribution([1, 50257], 1)
    with pytest.raises(ml.InputError, match="one vocabulary id"):
        LogitLens(model).layer_attribution([1, 2], [1, 2])


def test_direction_lens_and_sae_lens(tmp_path):
    from safetensors.numpy import save_file
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=1, hidden_size=32))
    g = model.params
    v = g.W_U[:, 123] / g.lnf_w  # through gamma, this reads token 123 exactly
    d = ml.direction_lens(model, v, k=3)
    scores = (v * g.lnf_w) @ g.W_U
    assert d.promoted_ids.tolist() == np.argsort(-scores)[:3].tolist()
    assert d.suppressed_ids.tolist() == np.argsort(scores)[:3].tolist()
    W_dec = np.random.default_rng(0).standard_normal((6, 32)).astype(np.float32)
    save_file({"W_dec": W_dec, "W_enc": W_dec.T.copy()}, str(tmp_path / "sae_weights.safetensors"))
    lenses = ml.sae_lens(model, tmp_path, features=[4, 1], k=2)
    assert [x.feature for x in lenses] == [4, 1]
    assert (lenses[0].promoted_ids.tolist()
            == ml.direction_lens(model, W_dec[4], k=2).promoted_ids.tolist())
    with pytest.raises(ml.InputError, match="0..5"):
        ml.sae_lens(model, tmp_path / "sae_weights.safetensors", features=[6])
    with pytest.raises(ml.InputError, match=r"\[d_model\] = \[32\]"):
        ml.direction_lens(model, np.ones(31))
    save_file({"W_dec": np.ones((2, 31), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ml.CheckpointError, match="another model"):
        ml.sae_lens(model, tmp_path / "other.safetensors")
