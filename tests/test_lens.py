"""The logit lens: against transformers' own modules, and against a naive full-vocabulary
computation.

Every lens row must equal lm_head(norm(hidden_states[l])), computed by transformers on the
same checkpoint (hidden_states[l] is resid_pre[l] for l < L; its last entry is already normed,
so final_post is compared with the model's logits). The statistics (top-k through group maxima,
rank, entropy, KL) are checked against a plain softmax over the whole vocabulary.
"""
import numpy as np
import pytest

from _torch import import_torch

torch, transformers = import_torch()

import minilens as ml  # noqa: E402
from minilens.analysis.lens import top_k_by_group_maxima  # noqa: E402
from minilens.course.bench import HookedAutoConfig, HookedAutoModel  # noqa: E402

VARIANTS = {
    "gpt2-tied": ("gpt2", dict(n_layer=3, n_embd=32, n_head=4, vocab_size=300, n_positions=64)),
    "gpt2-untied": ("gpt2", dict(n_layer=2, n_embd=32, n_head=2, vocab_size=300, n_positions=64,
                                 tie_word_embeddings=False)),
    "llama-untied-gqa": ("llama", dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=64,
                                       vocab_size=300)),
    "llama-tied": ("llama", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                 intermediate_size=64, vocab_size=300, tie_word_embeddings=True)),
    "llama-biased": ("llama", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                   intermediate_size=64, vocab_size=300, attention_bias=True,
                                   mlp_bias=True)),
}


def save_reference(folder, family, fields):
    """A transformers model saved with save_pretrained; every parameter (norm weights and biases
    included) is perturbed away from its init, so that gamma, beta and every bias matter."""
    torch.manual_seed(0)
    cls = transformers.GPT2Config if family == "gpt2" else transformers.LlamaConfig
    model = transformers.AutoModelForCausalLM.from_config(cls(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # large enough that logits are O(1), not near-uniform
    model.save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    family, fields = VARIANTS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    save_reference(folder, family, fields)
    return request.param, family, folder


def float64_clean_rms_norm(self, hidden_states):
    """LlamaRMSNorm.forward without its cast to float32 (the same equation, in the input's
    dtype)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def reference_rows(folder, family, ids, dtype):
    """lm_head(norm(hidden_states[l])) for l < L, then the logits: transformers' own modules."""
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids[None]), output_hidden_states=True)
        norm = ref.transformer.ln_f if family == "gpt2" else ref.model.norm
        rows = [ref.lm_head(norm(h))[0].numpy() for h in out.hidden_states[:-1]]
        return rows + [out.logits[0].numpy()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_lens_row_equals_transformers(checkpoint, dtype, monkeypatch):
    name, family, folder = checkpoint
    if dtype == np.float64:  # stock Llama RMSNorm computes in float32 even in a float64 model
        monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward",
                            float64_clean_rms_norm)
    model = ml.load(folder, dtype=dtype)
    # > 20 tokens: RoPE layout errors show
    ids = np.random.default_rng(1).integers(0, model.cfg.d_vocab, 25)
    lens = ml.logit_lens(model.run(ids))
    ref = reference_rows(folder, family, ids,
                         torch.float32 if dtype == np.float32 else torch.float64)
    assert list(lens.labels) == [f"{l}_pre" for l in range(model.cfg.n_layers)] + ["final_post"], (
        f"lens rows are {list(lens.labels)}: expected one '{{l}}_pre' per layer, then 'final_post'")
    for r, theirs in enumerate(ref):
        ours = lens.logits(r)
        scale = max(1.0, float(np.abs(theirs).max()))
        # float32: both sides round at ~1e-7 per op in different orders, through a few layers.
        # float64: 1e-9. For Llama the reference's RMSNorm is patched to stay in float64 (above);
        # its rotary tables are still computed in float32 by transformers, which leaves ~1e-7: 1e-6.
        tol = 1e-4 if dtype == np.float32 else (1e-9 if family == "gpt2" else 1e-6)
        err = np.abs(ours - theirs).max() / scale
        assert err < tol, (
            f"{name} lens row {lens.labels[r]} differs from transformers' "
            f"lm_head(norm(hidden_states[{r}])) (final_post: its logits) by {err:.2e} "
            f"(relative, tol {tol:g}): is the final norm recomputed on this row's "
            "stream, not frozen at the final layer's scale (TransformerLens #1076)? If only "
            "final_post is off, is it the model's own logits (tied/untied W_U, b_U)?")
        np.testing.assert_allclose(
            lens.target_logit[r], theirs[np.arange(len(ids)), lens.target_ids],
            atol=tol * scale, rtol=0,
            err_msg=f"{name} row {lens.labels[r]}: target_logit is not the row's logit at "
                    "target_ids: is it read at the tracked token, on the same positions?")


def naive_statistics(logits, target, k):
    """The statistics from a float64 softmax over the whole vocabulary.  [n, d_vocab] -> dict"""
    x = logits.astype(np.float64)
    logp = x - x.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    p = np.exp(logp)
    rows = np.arange(len(x))
    return dict(top_ids=np.argsort(-x, axis=1, kind="stable")[:, :k], p=p, logp=logp,
                target_prob=p[rows, target], entropy=-(p * logp).sum(1),
                target_rank=(x > x[rows, target][:, None]).sum(1))


@pytest.mark.parametrize("name,overrides", [
    # blocks of 64, a short tail block
    ("gpt2", dict(n_layer=2, n_embd=16, n_head=2, vocab_size=5000)),
    # vocabulary smaller than k * B
    ("llama", dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=2,
                   num_key_value_heads=1, intermediate_size=32, vocab_size=97)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_statistics_equal_a_naive_full_softmax(name, overrides, dtype):
    model = HookedAutoModel(HookedAutoConfig(name, **overrides), seed=3, dtype=dtype)
    # Random weights give near-uniform predictions; scale W_U so the distributions are peaked.
    model.params.W_U = model.params.W_U * 200
    trace = model.run(np.random.default_rng(2).integers(0, model.cfg.d_vocab, 12))
    lens = ml.logit_lens(trace, top_k=7, incl_mid=True)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    final = naive_statistics(trace.logits, lens.target_ids, 7)
    for r in range(len(lens.labels)):
        ref = naive_statistics(lens.logits(r), lens.target_ids, 7)
        vals = np.take_along_axis(lens.logits(r), lens.top_ids[r], 1)
        ref_vals = np.take_along_axis(lens.logits(r), ref["top_ids"], 1)
        np.testing.assert_array_equal(vals, ref_vals,
                                      err_msg="top-k values differ: is a candidate block missed?")
        row = lens.labels[r]
        np.testing.assert_allclose(
            lens.top_probs[r], np.take_along_axis(ref["p"], ref["top_ids"], 1), atol=tol,
            err_msg=f"row {row}: top-k probabilities differ from a full softmax: is Z summed over "
                    "the whole vocabulary (not the k candidates), after subtracting the row max?")
        np.testing.assert_array_equal(
            lens.target_rank[r], ref["target_rank"],
            err_msg=f"row {row}: target_rank should count the tokens with a strictly larger "
                    "logit (0 = top): are ties, or the target itself, counted?")
        np.testing.assert_allclose(
            lens.target_prob[r], ref["target_prob"], atol=tol,
            err_msg=f"row {row}: target_prob differs from the full softmax at the target: "
                    "is it exp(logit - row max - log Z) with this row's own Z?")
        np.testing.assert_allclose(
            lens.entropy[r], ref["entropy"], atol=tol * 10,
            err_msg=f"row {row}: entropy differs from -sum p log p: is it log Z - E_p[shifted], "
                    "with the expectation under this row's own p?")
        kl = (final["p"] * (final["logp"] - ref["logp"])).sum(1)
        np.testing.assert_allclose(
            lens.kl_to_final[r], kl, atol=tol * 10,
            err_msg=f"row {row}: kl_to_final should be KL(p_final || p_row), the expectation "
                    "under p_final: is the direction reversed?")
    assert (lens.entropy <= np.log(model.cfg.d_vocab) + tol).all(), (
        f"an entropy exceeds log(d_vocab) = {np.log(model.cfg.d_vocab):.4f} nats, the uniform "
        "maximum: is p normalised over the whole vocabulary?")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_invariants_final_post_kl_and_probabilities(dtype):
    for seed, (name, overrides) in enumerate([
            ("gpt2", dict(n_layer=3, n_embd=32, n_head=4, vocab_size=1000)),
            ("llama", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=48, vocab_size=777,
                           attention_bias=True))]):
        model = HookedAutoModel(HookedAutoConfig(name, **overrides), seed=seed, dtype=dtype)
        trace = model.run(np.random.default_rng(seed).integers(0, model.cfg.d_vocab, 40))
        lens = ml.logit_lens(trace, positions=[0, 5, -1, 17])
        final = lens.logits("final_post")
        # final_post is N(x_L) W_U + b_U, which is what the model computed: equal bit for bit.
        assert np.array_equal(final, trace.logits[[0, 5, 39, 17]]), (
            "final_post must reproduce trace.logits exactly")
        # ... and it is also what recomputing the final norm on resid_final gives (up to BLAS
        # rounding, ~1 ulp of |logits| in float32, because a GEMM over fewer rows may block
        # differently).
        from minilens.analysis.lens import lens_logits
        again = lens_logits(trace.model, trace["resid_final"][[0, 5, 39, 17]])
        scale = float(np.abs(trace.logits).max())
        assert np.abs(again - final).max() <= (1e-6 if dtype == np.float32 else 1e-14) * scale, (
            f"{name}: lens_logits(resid_final) differs from trace.logits by "
            f"{np.abs(again - final).max():.2e}: does the lens use the model's own final_norm "
            "(eps, gamma, beta) and unembed (W_U, b_U)?")
        assert (lens.kl_to_final[-1] == 0).all(), "KL(p_final || p_final) must be exactly 0"
        for r in range(len(lens.labels)):
            x = lens.logits(r).astype(np.float64)
            p = np.exp(x - x.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            np.testing.assert_allclose(
                p.sum(1), 1, atol=1e-12,
                err_msg=f"{name} row {lens.labels[r]}: softmax of the lens logits does not sum "
                        "to 1: are there inf or NaN logits?")
            np.testing.assert_allclose(
                lens.target_prob[r], p[np.arange(4), lens.target_ids],
                rtol=1e-4 if dtype == np.float32 else 1e-10,
                err_msg=f"{name} row {lens.labels[r]}: target_prob differs from softmax("
                        "logits(r)) at the targets: are positions [0, 5, -1, 17] kept in that "
                        "order, with -1 mapped to the last position?")
        assert (lens.top_probs.sum(-1) <= 1 + 1e-5).all(), (
            f"{name}: top-k probabilities sum above 1: is an id counted twice, or Z summed over "
            "only part of the vocabulary?")


def test_default_target_is_the_next_token_then_the_final_top1():
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=1, hidden_size=16,
                                             num_attention_heads=2, num_key_value_heads=2,
                                             intermediate_size=16))
    trace = model.run([5, 9, 11, 3])
    lens = ml.logit_lens(trace)
    assert lens.target_ids.tolist() == [9, 11, 3, int(trace.logits[-1].argmax())], (
        f"default targets are {lens.target_ids.tolist()}: each position should track the next "
        "token, and the last position (which has none) the final logits' top-1")
    assert ml.logit_lens(trace, target=42).target_ids.tolist() == [42] * 4, (
        "an int target should be tracked at every position")
    assert ml.logit_lens(trace, target=[1, 2], positions=[0, 2]).target_ids.tolist() == [1, 2], (
        "a list target gives one id per requested position, in the order given")


def test_top_k_handles_ties_and_the_tail_block():
    rng = np.random.default_rng(0)
    # many ties; 1003 = 31 blocks of 32 + 11
    x = rng.integers(0, 5, size=(6, 1003)).astype(np.float32)
    x[:, -1] = 9                            # the winner sits in the short tail block
    ids, vals, row_max = top_k_by_group_maxima(x, 4)
    assert (ids[:, 0] == 1002).all() and (row_max == 9).all(), (
        f"the winner 9 at id 1002 was missed (top ids {ids[:, 0]}, row max {row_max}): is the "
        "short tail group (columns 992..1002, past 32 * 31) searched?")
    np.testing.assert_array_equal(
        vals, -np.sort(-x, axis=1)[:, :4],
        err_msg="top-4 values with many ties differ from a full sort: is a tied group dropped?")


@pytest.mark.parametrize("d_vocab", [7, 100, 1003, 50257])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_by_group_maxima_equals_a_full_sort(d_vocab, k):
    """Exact against np.sort, on [rows, positions, d_vocab] input as the lens passes it, with
    ties."""
    rng = np.random.default_rng(d_vocab + k)
    x = rng.standard_normal((3, 2, d_vocab)).astype(np.float32)
    x[0, 0, ::3] = 2.5                                          # a row full of ties
    ids, vals, row_max = top_k_by_group_maxima(x, k)
    k = min(k, d_vocab)
    np.testing.assert_array_equal(
        vals, -np.sort(-x, axis=-1)[..., :k],
        err_msg=f"d_vocab={d_vocab} k={k}: top-k values differ from a full sort: is one of the "
                "k groups with the largest maxima, or the short tail group, left out?")
    np.testing.assert_array_equal(   # the ids point at those values
        np.take_along_axis(x, ids, axis=-1), vals,
        err_msg=f"d_vocab={d_vocab} k={k}: the ids do not point at the values: are candidates "
                "mapped back to vocabulary columns as g + n_groups * i (interleaved groups)?")
    assert all(len(set(row)) == k for row in ids.reshape(-1, k)), (
        f"d_vocab={d_vocab} k={k}: an id is repeated: are the tail group's overhanging "
        "columns (clipped to d_vocab - 1) masked with -inf?")
    np.testing.assert_array_equal(
        row_max, x.max(-1),
        err_msg=f"d_vocab={d_vocab} k={k}: row_max differs from x.max(-1): is the tail "
                "group's max included?")


def test_bad_inputs_raise_input_errors():
    model = HookedAutoModel(HookedAutoConfig("gpt2", n_layer=1, n_embd=16, n_head=2))
    trace = model.run([1, 2, 3])
    for kwargs, words in [(dict(positions=[3]), "out of range"), (dict(top_k=0), "top_k"),
                          (dict(target=50257), "out of range"),
                          (dict(target=[1, 2]), "one id per position")]:
        with pytest.raises(ml.InputError, match=words):
            ml.logit_lens(trace, **kwargs)
    with pytest.raises(ml.InputError, match="needs"):
        ml.logit_lens(model.run([1, 2, 3], names={"resid_final"}))
    with pytest.raises(ml.InputError, match="no lens row"):
        ml.logit_lens(trace).logits("7_pre")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_statistics_of_logits_hundreds_below_the_max(dtype):
    """A row whose logits spread hundreds below its max, as the lens's embedding row does on
    SmolLM2. Their exp is floored at EXP_FLOOR (no subnormals), but the entropy and the KL must use
    the true logits: KL(p_final || p_row) is large where the final row puts mass on tokens this
    row puts at -300. Checked against a float64 log-softmax."""
    from minilens.analysis import lens
    rng = np.random.default_rng(5)
    V = 3000
    row = -rng.uniform(0, 400, V)                   # far below its max, which is 0 or near it
    final = rng.normal(0, 2, V)
    logits = np.stack([row, final])[:, None, :]     # [R = 2, n_pos = 1, V]
    stats = lens.position_statistics(logits.astype(dtype), np.array([7]), 5,
                                     np.empty(logits.shape, dtype))

    def log_softmax(x):
        return x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    logp_row, logp_final = log_softmax(row), log_softmax(final)
    p_row, p_final = np.exp(logp_row), np.exp(logp_final)
    kl = (p_final * (logp_final - logp_row)).sum()
    entropy = -(p_row * logp_row).sum()
    np.testing.assert_allclose(stats["kl_to_final"][0, 0], kl, rtol=1e-5, err_msg=(
        "KL to the final row is wrong for logits far below their max: is the floor on exp's "
        "input applied to the logits themselves?"))
    np.testing.assert_allclose(stats["entropy"][0, 0], entropy, rtol=1e-4, atol=1e-6)
