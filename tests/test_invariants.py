"""Invariants of one forward pass: identities the Trace must satisfy whatever the weights.

They need no reference implementation, only the definitions in minilens/trace.py:
resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out, the next block reads the
previous block's output, attention rows are probability distributions over earlier tokens, and
attn_out is the heads' outputs z through W_O.

The sums are checked in float64 to 1e-12: they are one or two additions of O(1) numbers (exact to
~1e-16), so any larger gap means a key records something other than what its name says.
"""

from __future__ import annotations

import numpy as np
import pytest

from _torch import import_torch

torch, transformers = import_torch()  # the factories save checkpoints with transformers

import minilens as ml  # noqa: E402
from factories import make_gpt2, make_llama, prompt, write_tokenizer  # noqa: E402

N_SEQ = 41
EXACT = 1e-12

FAMILIES = {
    "gpt2": (make_gpt2, {"n_layers": 3}),
    "llama-gqa-bias": (make_llama, {"n_layers": 3, "d_model": 64, "n_heads": 8, "n_kv_heads": 2,
                                    "attention_bias": True, "mlp_bias": True}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request, tmp_path_factory):
    factory, kwargs = FAMILIES[request.param]
    folder, _ = factory(tmp_path_factory.mktemp(request.param), **kwargs)
    write_tokenizer(folder)
    return ml.load(folder, dtype=np.float64)


@pytest.fixture(scope="module")
def trace(model):
    return model.run(prompt(N_SEQ))


def close(a, b, tol=EXACT):
    return float(np.abs(a - b).max()) <= tol


def test_every_key_has_its_documented_shape(model, trace):
    c = model.cfg
    n, d = N_SEQ, c.d_model
    shapes = {"resid_pre": (n, d), "resid_mid": (n, d), "resid_post": (n, d), "attn_out": (n, d),
              "mlp_out": (n, d), "scale_ln1": (n, 1), "scale_ln2": (n, 1),
              "q": (n, c.n_heads, c.d_head), "k": (n, c.n_kv_heads, c.d_head),
              "v": (n, c.n_kv_heads, c.d_head), "z": (n, c.n_heads, c.d_head),
              "pattern": (c.n_heads, n, n), "mlp_post": (n, c.d_mlp)}
    for l in range(c.n_layers):
        for key, shape in shapes.items():
            assert trace[key, l].shape == shape, (
                f"trace[{key!r}, {l}] has shape {trace[key, l].shape}, not {shape}")
            assert trace[key, l].dtype == np.float64, (
                f"trace[{key!r}, {l}] was not computed in the model's dtype")
    assert (trace["embed"].shape == trace["resid_final"].shape == trace["normalized"].shape
            == (n, d)), (
        f"embed {trace['embed'].shape}, resid_final {trace['resid_final'].shape}, normalized "
        f"{trace['normalized'].shape}: each should be [n_seq, d_model] = {(n, d)}")
    assert trace["scale_final"].shape == (n, 1), (
        f"scale_final has shape {trace['scale_final'].shape}, not [n_seq, 1]: is the norm's "
        "divisor kept with keepdims, one per position?")
    assert trace.logits.shape == (n, c.d_vocab), (
        f"logits have shape {trace.logits.shape}, not [n_seq, d_vocab] = {(n, c.d_vocab)}: "
        "the logits for every position, always")
    assert ("pos_embed" in trace) == (c.positional == "learned"), (
        f"positional={c.positional!r} but pos_embed is {'' if 'pos_embed' in trace else 'not '}"
        "recorded: only learned positions (W_pos) write to the stream")


def test_residual_stream_adds_up(model, trace):
    x = trace["embed"] + (trace["pos_embed"] if "pos_embed" in trace else 0)
    assert close(trace["resid_pre", 0], x), "resid_pre 0 should be the token (+ position) embedding"
    for l in range(model.cfg.n_layers):
        assert close(trace["resid_mid", l], trace["resid_pre", l] + trace["attn_out", l]), (
            f"resid_mid {l} != resid_pre {l} + attn_out {l}: is attn_out recorded after W_O "
            "and b_O, and resid_mid before the second norm?")
        assert close(trace["resid_post", l], trace["resid_mid", l] + trace["mlp_out", l]), (
            f"resid_post {l} != resid_mid {l} + mlp_out {l}: is mlp_out recorded after W_out "
            "and b_out, as the value added to the stream?")
        if l + 1 < model.cfg.n_layers:
            assert close(trace["resid_pre", l + 1], trace["resid_post", l]), (
                f"resid_pre {l + 1} != resid_post {l}: does block {l + 1} read block {l}'s "
                "output, and is each layer's value recorded under its own index?")
    assert close(trace["resid_final"], trace["resid_post", -1]), (
        "resid_final should be the last block's resid_post, before the final norm")


def test_logits_are_the_normalized_stream_through_W_U(model, trace):
    g = model.params
    logits = trace["normalized"] @ g.W_U + (0 if g.b_U is None else g.b_U)
    assert close(trace.logits, logits), (
        "logits != normalized @ W_U + b_U: is 'normalized' recorded after the final norm "
        "(gamma and beta applied), and W_U the tied W_E.T when the checkpoint ties them?")


def test_attention_pattern_is_causal_and_rows_sum_to_one(model, trace):
    above_diagonal = np.triu(np.ones((N_SEQ, N_SEQ), dtype=bool), k=1)
    for l in range(model.cfg.n_layers):
        pattern = trace["pattern", l]                           # [n_heads, n_seq, n_seq]
        assert (pattern[:, above_diagonal] == 0).all(), f"layer {l}: a query attends to a later key"
        assert (pattern >= 0).all(), (
            f"layer {l}: a negative attention weight: is the pattern the softmax, not the scores?")
        assert close(pattern.sum(-1), 1.0), (
            f"layer {l}: pattern rows must be distributions over keys")
        assert close(pattern[:, 0, 0], 1.0), "the first token can only attend to itself"


def test_attn_out_is_z_through_W_O(model, trace):
    c = model.cfg
    for l in range(c.n_layers):
        w = model.layers[l]
        z = trace["z", l].reshape(N_SEQ, c.n_heads * c.d_head)  # [n_seq, n_heads * d_head]
        attn_out = z @ w.W_O + (0 if w.b_O is None else w.b_O)
        assert close(trace["attn_out", l], attn_out), f"layer {l}: attn_out != z W_O + b_O"


def test_z_is_the_pattern_weighted_values_with_gqa_grouping(model, trace):
    """z[:, h] = pattern[h] @ v[:, h // (n_heads // n_kv_heads)]: repeat-interleave, not modulo."""
    c = model.cfg
    group = c.n_heads // c.n_kv_heads
    for h in range(c.n_heads):
        z_h = trace["pattern", 0][h] @ trace["v", 0][:, h // group]           # [n_seq, d_head]
        assert close(trace["z", 0][:, h], z_h), f"head {h} should read kv head {h // group}"


def test_negative_layer_indices(model, trace):
    L = model.cfg.n_layers
    for key in ("resid_pre", "attn_out", "pattern", "z"):
        for l in range(1, L + 1):
            assert trace[key, -l] is trace[key, L - l], (
                f"trace[{key!r}, {-l}] is not trace[{key!r}, {L - l}]: negative layers should "
                "count from the end, as in Python lists")
    for bad in (L, -L - 1):
        with pytest.raises(ml.InputError, match="out of range"):
            trace["resid_pre", bad]


def test_run_accepts_text_list_and_both_array_shapes(model):
    ids = model.to_tokens("to be , or not to be , that is the question")
    inputs = {"text": "to be , or not to be , that is the question", "list": ids.tolist(),
              "[n_seq]": ids, "[1, n_seq]": ids[None], "int32": ids.astype(np.int32)}
    expected = model.run(ids).logits
    for what, x in inputs.items():
        trace = model.run(x)
        np.testing.assert_array_equal(trace.ids, ids, err_msg=what)
        np.testing.assert_array_equal(trace.logits, expected, err_msg=f"run({what}) differs")


def test_run_batch_equals_one_at_a_time(model):
    """Same arithmetic, but BLAS may block a [3 * n_seq, d] product differently from [n_seq, d], so
    the summation order (not the formula) can differ: ~1e-16 relative per operation in float64.
    1e-12 absolute on O(10) values allows that and nothing else."""
    batch = np.stack([prompt(N_SEQ, seed=s) for s in range(3)])               # [3, n_seq]
    traces = model.run_batch(batch)
    assert len(traces) == 3, f"run_batch on 3 sequences returned {len(traces)} traces, not one each"
    for b, t in enumerate(traces):
        alone = model.run(batch[b])
        np.testing.assert_array_equal(
            t.ids, batch[b], err_msg=f"run_batch trace {b} holds another sequence's ids")
        assert close(t.logits, alone.logits), f"sequence {b}: logits differ from its solo run"
        for l in range(model.cfg.n_layers):
            for key in ("resid_pre", "attn_out", "pattern", "z"):
                assert close(t[key, l], alone[key, l]), (
                    f"sequence {b}: {key} {l} differs from its solo run")


def test_run_batch_in_float32_within_float32_rounding(model, tmp_path):
    """In float32 the summation-order noise is ~6e-8 relative per operation; 1e-5 x max(1, |logit|)
    is ample."""
    m32 = ml.load(model.folder)
    batch = np.stack([prompt(N_SEQ, seed=s) for s in range(3)])
    for b, t in enumerate(m32.run_batch(batch)):
        alone = m32.run(batch[b]).logits
        assert np.abs(t.logits - alone).max() <= 1e-5 * max(1.0, float(np.abs(alone).max())), (
            f"float32 sequence {b}: batched logits differ from its solo run by "
            f"{np.abs(t.logits - alone).max():.2e}: does the batch leak across sequences "
            "(mask, positions), or compute in another dtype?")


def test_names_records_only_the_requested_keys(model, trace):
    ids = prompt(N_SEQ)
    small = model.run(ids, names={"resid_pre", "pattern"})
    assert {key[0] for key in small.keys()} == {"resid_pre", "pattern"}, (
        f"names={{'resid_pre', 'pattern'}} recorded {sorted({key[0] for key in small.keys()})}")
    np.testing.assert_array_equal(                                              # logits always kept
        small.logits, trace.logits, err_msg="recording fewer names changed the logits")
    np.testing.assert_array_equal(
        small["resid_pre", -1], trace["resid_pre", -1],
        err_msg="recording fewer names changed resid_pre: names= must only choose what is kept")
    with pytest.raises(KeyError, match="not recorded"):
        small["attn_out", 0]
    assert model.run(ids, names=()).keys() == [], "names=() should record nothing but the logits"
    assert all(trace[key] is not None for key in trace.keys()), (
        "every listed key should be readable")
    assert "embed" in trace.keys() and ("resid_pre", 0) in trace.keys(), (
        "keys() should list 'embed' as a plain name and per-layer keys as (name, layer) tuples")


def test_the_model_keeps_no_state_between_runs(model):
    a = prompt(N_SEQ, seed=5)
    first = model.run(a).logits
    model.run(prompt(N_SEQ + 3, seed=6))
    np.testing.assert_array_equal(
        model.run(a).logits, first,
        err_msg="the same prompt gave other logits after another run: is a KV cache or a "
                "buffer kept between runs?")


def test_trace_knows_its_model(model, trace):
    assert trace.model is model and trace.n_layers == model.cfg.n_layers and trace.n_seq == N_SEQ, (
        f"trace.model/n_layers/n_seq = {trace.model is model}/{trace.n_layers}/{trace.n_seq}: "
        f"expected the model itself, {model.cfg.n_layers} layers, {N_SEQ} tokens")


@pytest.mark.parametrize("stored", ["float32", "bfloat16", "float16"])
def test_float32_mode_promotes_nothing(stored, tmp_path):
    """float32 is the default compute dtype: every recorded array stays float32, whatever the stored
    dtype (a float64 rope table or mask would silently promote everything after it, as in picoGPT's
    history)."""
    folder, _ = make_llama(tmp_path, dtype=stored, n_kv_heads=2, attention_bias=True)
    for trace in (ml.load(folder).run(prompt(N_SEQ)),
                  ml.load(folder).run_batch(np.stack([prompt(N_SEQ)] * 2))[1]):
        promoted = {key: trace[key].dtype for key in trace.keys() if trace[key].dtype != np.float32}
        assert not promoted and trace.logits.dtype == np.float32, f"promoted to float64: {promoted}"
