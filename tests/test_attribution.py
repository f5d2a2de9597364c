"""Direct logit attribution: the parts always sum to the model's own logit.

The invariants are checked over several random configs (LayerNorm and RMSNorm, biases on and off,
grouped-query attention, tied and untied unembeddings), positions, targets and contrasts. The
`logit` field comes from trace.logits, the forward pass's own output; the parts are computed from
the recorded components, so a wrong centring, scale or bias makes the sums disagree.

Tolerances: the parts are summed in float64. In float32 mode the forward pass itself rounds at
~1e-7 relative per op, so the sum meets the float32 logit to 1e-4 (times the logits' scale); in
float64 mode to 1e-9.
"""
import numpy as np
import pytest

import minilens as ml
from minilens.course.bench import HookedAutoConfig, HookedAutoModel

CONFIGS = [
    ("gpt2", dict(n_layer=3, n_embd=32, n_head=4, vocab_size=500)),
    ("gpt2", dict(n_layer=2, n_embd=24, n_head=3, vocab_size=300, tie_word_embeddings=False)),
    ("llama", dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=48, vocab_size=400)),
    ("llama", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                   num_key_value_heads=1, intermediate_size=40, vocab_size=300,
                   attention_bias=True, mlp_bias=True,
                   tie_word_embeddings=True)),
]


def make(i, dtype):
    name, overrides = CONFIGS[i]
    model = HookedAutoModel(HookedAutoConfig(name, **overrides), seed=i, dtype=dtype)
    # peaked logits: O(1-10), so the sums are not trivially ~0
    model.params.W_U = model.params.W_U * 50
    return model, model.run(np.random.default_rng(i).integers(0, model.cfg.d_vocab, 17))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_every_split_sums_to_the_logit(i, dtype):
    model, trace = make(i, dtype)
    rng = np.random.default_rng(100 + i)
    tol = (1e-4 if dtype == np.float32 else 1e-9) * max(1.0, float(np.abs(trace.logits).max()))
    for position in (0, 7, -1):
        target, contrast = (int(t) for t in rng.choice(model.cfg.d_vocab, 2, replace=False))
        for c in (None, contrast):
            logit = (float(trace.logits[position, target])
                     - (0.0 if c is None else float(trace.logits[position, c])))
            splits = [("layer", None), ("head", None)] + [(by, l) for l in range(model.cfg.n_layers)
                                                         for by in ("head", "neuron", "token")]
            for by, layer in splits:
                a = ml.layer_attribution(trace, target, position=position, by=by, contrast=c,
                                         layer=layer)
                assert a.logit == logit, (
                    f"by={by} position={position} contrast={c}: a.logit is {a.logit}, the "
                    f"model's is {logit}: is it read from trace.logits (minus the contrast's), "
                    "not rebuilt from the parts?")
                assert abs(a.values.sum() - a.logit) < tol, (
                    f"by={by} layer={layer} contrast={c}: parts sum to {a.values.sum():.6f}, "
                    f"the logit is {a.logit:.6f}: is the final norm's divisor frozen at its value "
                    "on resid_final, and the readout centred for LayerNorm (plus beta . u + b_U)?")
                if by != "layer":
                    assert a.labels[-1] == "rest", (
                        f"by={by}: the last part is {a.labels[-1]!r}, not 'rest': a split must end "
                        "with everything it does not cover, or the parts cannot sum to the logit")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_heads_tokens_and_neurons_refine_their_layer_entry(i, dtype):
    model, trace = make(i, dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    target, position = 3, 11
    layer = ml.layer_attribution(trace, target, position=position)
    assert layer.labels[0] == "embed" and layer.labels[-1] == "bias", (
        f"by='layer' parts run {layer.labels[0]!r}..{layer.labels[-1]!r}: expected 'embed' "
        "first and the readout constant 'bias' last")
    assert ("pos_embed" in layer.labels) == (model.cfg.positional == "learned"), (
        f"positional={model.cfg.positional!r} but pos_embed "
        f"{'is' if 'pos_embed' in layer.labels else 'is not'} a part: only learned positions "
        "write to the stream (RoPE rotates q and k instead)")
    for l in range(model.cfg.n_layers):
        heads = ml.layer_attribution(trace, target, position=position, by="head", layer=l)
        n_heads = model.cfg.n_heads
        assert list(heads.labels[:n_heads]) == [f"L{l}H{h}" for h in range(n_heads)], (
            f"layer {l}: head labels {list(heads.labels[:n_heads])}: expected L{l}H0.. in head "
            "order, one per query head (n_heads, not n_kv_heads)")
        bias = heads[f"{l}_attn_bias"]
        assert abs(heads.values[:n_heads].sum() - (layer[f"{l}_attn"] - bias)) < tol, (
            f"layer {l}: heads sum to {heads.values[:n_heads].sum():.6g}, the layer's attn entry "
            f"minus its bias is {layer[f'{l}_attn'] - bias:.6g}: is b_V subtracted from z once "
            "per head, and b_O + sum_h b_V[h] W_O[h] put in the bias?")
        tokens = ml.layer_attribution(trace, target, position=position, by="token", layer=l)
        assert len(tokens.values) == position + 1 + 2, (             # sources 0..q, bias, rest
            f"layer {l}: {len(tokens.values)} token parts, not {position + 1} sources + bias + "
            "rest: are later (masked) sources included, or the query itself left out?")
        assert tokens[f"{l}_attn_bias"] == pytest.approx(bias, abs=tol), (
            f"layer {l}: by='token' and by='head' put different amounts in {l}_attn_bias: "
            "the bias must be decided once, the same for both splits")
        assert abs(tokens.values[:position + 1].sum() - (layer[f"{l}_attn"] - bias)) < tol, (
            f"layer {l}: source tokens must sum to the layer's attn entry minus its bias: "
            "does GQA map head h to kv head h // group (repeat, not tile)?")
        neurons = ml.layer_attribution(trace, target, position=position, by="neuron", layer=l)
        assert len(neurons.values) == model.cfg.d_mlp + 2, (
            f"layer {l}: {len(neurons.values)} neuron parts, not d_mlp = {model.cfg.d_mlp} "
            "neurons + mlp bias + rest")
        n = neurons.values[:model.cfg.d_mlp]
        assert (np.diff(np.abs(n)) <= 0).all(), "neurons are sorted by |value|, largest first"
        assert abs(n.sum() - (layer[f"{l}_mlp"] - neurons[f"{l}_mlp_bias"])) < tol, (
            f"layer {l}: neurons sum to {n.sum():.6g}, the mlp entry minus b_out's share is "
            f"{layer[f'{l}_mlp'] - neurons[f'{l}_mlp_bias']:.6g}: is each neuron "
            "mlp_post[q, i] * (W_out[i] . w_read), read after the activation (and the gate)?")
        if model.cfg.mlp_bias or model.cfg.o_bias or model.cfg.qkv_bias:
            assert bias != 0 or neurons[f"{l}_mlp_bias"] != 0, (
                f"layer {l}: the model has biases but both bias parts are exactly 0: are b_O, "
                "b_V and b_out loaded, and read into the bias parts?")


def test_attribution_is_independent_of_how_the_stream_is_split():
    """The layer entries recomputed by hand: c . w with the frozen scale, from the trace alone."""
    model, trace = make(0, np.float64)
    g, q, t = model.params, 5, 42
    w = g.lnf_w * g.W_U[:, t] / trace["scale_final"][q, 0]
    a = ml.layer_attribution(trace, t, position=q)
    mlp1 = trace["mlp_out", 1][q]
    assert a["1_mlp"] == pytest.approx(float((mlp1 - mlp1.mean()) @ w), abs=1e-12), (
        "1_mlp differs from (c - mean(c)) . (gamma * W_U[:, t] / s) by hand: is s frozen at "
        "scale_final, and mlp_out centred (LayerNorm)?")
    assert a["bias"] == pytest.approx(float(g.lnf_b @ g.W_U[:, t]), abs=1e-12), (
        "the bias part differs from beta . W_U[:, t]: is the final LayerNorm's beta read "
        "through W_U (GPT-2 has no b_U)?")


def test_top_returns_the_largest_parts():
    _, trace = make(2, np.float32)
    a = ml.layer_attribution(trace, 7)
    top = a.top(3)
    assert [v for _, v in top] == sorted((float(v) for v in a.values), key=abs, reverse=True)[:3], (
        f"top(3) gave {top}: it should be the 3 parts of largest |value| (not largest value), "
        "largest first")


def test_bad_requests_name_the_fix():
    model, trace = make(2, np.float32)
    cases = [(dict(by="neurons"), "use one of"), (dict(contrast=5), "contrast is the target"),
             (dict(by="neuron"), "pass layer="), (dict(by="token", layer=9), "out of range"),
             (dict(position=17), "out of range"), (dict(by="layer", layer=0), "drop layer=")]
    for kwargs, words in cases:
        with pytest.raises(ml.InputError, match=words):
            ml.layer_attribution(trace, 5, **kwargs)
    with pytest.raises(ml.InputError, match="out of range"):
        ml.layer_attribution(trace, model.cfg.d_vocab)
