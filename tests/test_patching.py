"""Interventions and activation patching hold their exact invariants, on every family, in
float64.

Random checkpoints of each family (tests/random_checkpoints.py, no torch). Two prompts of equal
length that differ in a few tokens play clean and corrupted. Tolerances: 1e-12 of the logits'
scale where the same sums are done in the same order (a patch that restores a run exactly), and
1e-10 where a batch of patched runs is compared with runs one at a time (BLAS may block a batched
product differently).
"""

from __future__ import annotations

import numpy as np
import pytest

import minilens as ml
from minilens import InputError
from minilens.analysis.patching import ablation, activation_patching, knockout
from minilens.config import FAMILY_READERS
from random_checkpoints import gpt2_config, llama_config, write_checkpoint

N_SEQ, D_VOCAB = 12, 61
EXACT, BATCHED = 1e-12, 1e-10


def config(family: str) -> dict:
    if family == "gpt2":
        return gpt2_config(n_layers=3, d_vocab=D_VOCAB)
    extra = {"gpt_neox": dict(rotary_pct=0.5, use_parallel_residual=True),
             "gemma2": dict(attn_logit_softcapping=5.0, final_logit_softcapping=8.0,
                            sliding_window=4, query_pre_attn_scalar=8)}.get(family, {})
    return llama_config(n_layers=3, n_heads=4, n_kv_heads=2, d_vocab=D_VOCAB, model_type=family,
                        **extra)


@pytest.fixture(scope="module", params=sorted(FAMILY_READERS))
def model(request, tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp(request.param) / "m", config(request.param),
                              seed=3)
    m = ml.load(folder, dtype=np.float64, fast=False)
    return m


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    clean = rng.integers(3, D_VOCAB, N_SEQ)
    corrupted = clean.copy()
    corrupted[[2, 5]] = (clean[[2, 5]] + 7) % D_VOCAB            # two tokens swapped for others
    return clean, corrupted


def scale_of(logits) -> float:
    return max(1.0, float(np.abs(logits).max()))


def assert_same_run(a, b, tol, what):
    err = float(np.abs(a - b).max()) / scale_of(b)
    assert err <= tol, f"{what}: logits differ by {err:.3g} of their scale (tolerance {tol:g})"


def test_patching_resid_pre_at_layer_0_everywhere_reproduces_the_clean_run(model, prompts):
    clean, corrupted = prompts
    c = model.run(clean)
    patched = model.run(corrupted, interventions={("resid_pre", 0): c["resid_pre", 0]})
    assert_same_run(patched.logits, c.logits, EXACT,
                    "resid_pre 0 patched from clean at every position")
    assert patched.intervened == {("resid_pre", 0)}, "the trace notes which keys were intervened on"


def test_patching_resid_pre_at_the_last_layer_reproduces_the_clean_run(model, prompts):
    clean, corrupted = prompts
    c = model.run(clean)
    patched = model.run(corrupted, interventions={("resid_pre", -1): c["resid_pre", -1]})
    assert_same_run(patched.logits, c.logits, EXACT, "resid_pre L-1 patched at every position")


def test_patching_nothing_and_restarting_give_the_corrupted_run(model, prompts):
    _, corrupted = prompts
    run = model.run(corrupted)
    assert np.array_equal(model.run(corrupted, interventions={}).logits, run.logits), \
        "no patch, other logits"
    for l in range(model.cfg.n_layers):  # the restart that activation_patching uses
        _, logits = model._forward(corrupted, (), None, start=l, resid=run["resid_pre", l])
        assert_same_run(logits, run.logits, EXACT,
                        f"restarting at block {l} from the recorded stream")


def test_embedding_heads_and_mlps_together_restore_the_clean_run_heads_alone_do_not(
        model, prompts):
    clean, corrupted = prompts
    c = model.run(clean)
    everything = {"embed": c["embed"]}
    for l in range(model.cfg.n_layers):
        everything[("z", l)] = c["z", l]
        everything[("mlp_out", l)] = c["mlp_out", l]
    assert_same_run(model.run(corrupted, interventions=everything).logits, c.logits, EXACT,
                    "embed + every z + every mlp_out patched from clean")
    heads_only = {k: v for k, v in everything.items() if k[0] == "z"}
    err = np.abs(model.run(corrupted, interventions=heads_only).logits - c.logits).max()
    assert err > 1e-3, ("patching only the heads restored the clean run, "
                        "but the corrupted tokens should "
                        "still reach the stream through the embedding and the MLPs")


def test_an_identity_intervention_changes_nothing_bit_for_bit(model, prompts):
    clean, _ = prompts
    plain = model.run(clean)
    for key in ("embed", ("resid_pre", 1), ("q", 0), ("k", 1), ("v", 2), ("pattern", 1), ("z", 0),
                ("attn_out", 2), ("mlp_post", 1), ("mlp_out", 0), ("resid_post", 2)):
        same = model.run(clean, interventions={key: lambda x: x})
        assert np.array_equal(same.logits, plain.logits), \
            f"an identity intervention on {key} changed the logits"


def test_knockout_of_nothing_changes_nothing_and_of_everything_leaves_the_self_edge(model, prompts):
    clean, _ = prompts
    plain = model.run(clean)
    none = model.run(clean, interventions=knockout(model, [0, 1], target=N_SEQ - 1, sources=[]))
    assert_same_run(none.logits, plain.logits, EXACT, "knocking out no edges")
    every = model.run(clean,
                      interventions=knockout(model, [1], target=N_SEQ - 1, sources=range(N_SEQ)))
    row = every["pattern", 1][:, -1]                                   # [n_heads, n_seq]
    assert np.array_equal(row[:, -1], np.ones(model.cfg.n_heads)) and not row[:, :-1].any(), \
        "knocking out every edge into a position leaves only its edge to itself, with weight 1"


def test_the_grid_equals_one_patch_at_a_time_and_the_normalised_ends_are_0_and_1(model, prompts):
    clean, corrupted = prompts
    raw = activation_patching(model, clean, corrupted, lambda lg: float(lg[-1, 1] - lg[-1, 2]),
                              layers=[0, 2])
    c = model.run(clean)
    for i, l in enumerate([0, 2]):
        for p in (0, 5, N_SEQ - 1):
            def patch(x, p=p, l=l):
                x = x.copy()
                x[p] = c["resid_pre", l][p]
                return x
            one = model.run(corrupted, interventions={("resid_pre", l): patch}).logits
            want = float(one[-1, 1] - one[-1, 2])
            assert abs(raw.values[i, p] - want) <= BATCHED * scale_of(one), \
                (f"grid cell (layer {l}, position {p}) differs from patching that one cell "
                 f"in a full run")
    norm = activation_patching(model, clean, corrupted, "logit_diff_normalized", target=1,
                               contrast=2, layers=[0, 2])
    assert (norm.clean, norm.corrupted) == (1.0, 0.0), \
        "the normalised metric is 1 on clean, 0 on corrupted"
    lds = (raw.values - raw.corrupted) / (raw.clean - raw.corrupted)
    assert np.allclose(norm.values, lds, rtol=0, atol=1e-12), \
        "normalised = (m - m_corr) / (m_clean - m_corr)"


@pytest.mark.parametrize("key, by", [("z", "head"), ("v", "head"), ("pattern", "head_position"),
                                     ("attn_out", "position"), ("mlp_post", "position")])
def test_heads_and_keys_patch_cell_by_cell(model, prompts, key, by):
    clean, corrupted = prompts
    r = activation_patching(model, clean, corrupted, lambda lg: float(lg[-1, 1]), key=key, by=by,
                            layers=[1], direction="noising")
    n = {"z": model.cfg.n_heads, "v": model.cfg.n_kv_heads,
         "pattern": model.cfg.n_heads}.get(key, N_SEQ)
    assert r.values.shape[:2] == (1, n), \
        f"{key} by {by}: one cell per {'head' if key != 'attn_out' else 'pos'}"
    assert "noising" in r.describe() and "corrupted -> clean" in r.describe(), \
        "the result says its direction"


def test_ablations_zero_the_component_and_change_the_output(model, prompts):
    clean, corrupted = prompts
    plain = model.run(clean)
    zeroed = model.run(clean, interventions=ablation(model, "head", 1, 0, "zero"))
    assert not zeroed["z", 1][:, 0].any(), "a zero-ablated head's z is 0"
    assert np.abs(zeroed.logits - plain.logits).max() > 0
    meaned = model.run(clean, interventions=ablation(model, "neuron", 0, 3, "mean",
                                                     reference=[corrupted, clean]))
    want = np.mean([model.run(r)["mlp_post", 0][:, 3] for r in (corrupted, clean)])
    assert np.allclose(meaned["mlp_post", 0][:, 3], want), \
        "mean ablation: the mean over the reference runs"
    resampled = model.run(clean, interventions=ablation(model, "mlp", 2, kind="resample",
                                                        reference=corrupted))
    assert np.array_equal(resampled["mlp_out", 2], model.run(corrupted)["mlp_out", 2])


def test_bad_interventions_are_input_errors(model, prompts):
    clean, corrupted = prompts
    with pytest.raises(InputError, match="returned shape"):
        model.run(clean, interventions={("resid_pre", 0): lambda x: x[:-1]})
    with pytest.raises(InputError, match="returned shape .* float32"):
        model.run(clean, interventions={("resid_pre", 0): lambda x: x.astype(np.float32)})
    with pytest.raises(InputError, match="cannot intervene on \\('scale_ln1', 0\\)"):
        model.run(clean, interventions={("scale_ln1", 0): lambda x: x})
    with pytest.raises(InputError, match="must align"):
        activation_patching(model, clean, corrupted[:-1], lambda lg: 0.0)
    with pytest.raises(InputError, match="head index 99 is out of range"):
        ablation(model, "head", 0, 99)
    with pytest.raises(InputError, match="must return one finite number"):
        activation_patching(model, clean, corrupted, lambda lg: lg[-1], layers=[0])
    with pytest.raises(InputError, match="layer 7 is out of range"):
        model.run(clean, interventions={("z", 7): lambda x: x})


def test_path_patching_and_steering(model, prompts):
    clean, corrupted = prompts
    base = model.run(corrupted).logits
    metric = lambda lg: float(lg[-1, 1] - lg[-1, 2])  # noqa: E731
    same = ml.path_patching(model, corrupted, corrupted, sender=(0, 1), receivers=[(2, 0)],
                            metric=metric)
    assert abs(same - metric(base)) <= EXACT * scale_of(base), \
        "path patching between identical runs changes nothing"
    moved = ml.path_patching(model, clean, corrupted, sender=(0, 1),
                             receivers=[(1, h) for h in range(4)], metric=metric)
    assert np.isfinite(moved)
    with pytest.raises(InputError, match="later layer"):
        ml.path_patching(model, clean, corrupted, sender=(1, 0), receivers=[(1, 0)], metric=metric)
    zero = np.zeros(model.cfg.d_model)
    assert np.array_equal(model.run(clean, interventions={("resid_pre", 1): ml.steer(zero)}).logits,
                          model.run(clean).logits), "steering by a zero vector changes nothing"
    with pytest.raises(InputError, match="steer"):
        ml.steer([np.nan, 1.0])


def test_direct_and_total_effects_equal_their_definitions_and_run_the_reference_once(model,
                                                                                    prompts):
    """The total effect of a component is the metric's drop when it alone is mean-ablated, the
    direct effect its term in the attribution; the reference texts are recorded once for all
    components (they were rerun for every ablated component)."""
    from minilens.analysis.attribution import layer_attribution

    clean, corrupted = prompts
    t, c = int(np.argmax(model(clean)[-1])), int(np.argmin(model(clean)[-1]))
    runs = []
    run = model.run

    def counting_run(ids, *a, **k):
        runs.append(k.get("interventions") is None)
        return run(ids, *a, **k)
    model.run = counting_run
    try:
        effects = ml.direct_and_total_effects(model, clean, t, c, kind="mean",
                                              reference=[corrupted, clean], heads=True)
    finally:
        del model.run
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    assert sum(runs) == 3, f"{sum(runs)} plain runs: the text once, each reference once"

    def metric(logits):
        return float(logits[-1, t] - logits[-1, c])
    base = metric(model.run(clean).logits)
    attr = layer_attribution(model.run(clean), target=t, contrast=c, by="layer")
    for l in range(n_layers):
        for component, h, label in [("attn", None, f"{l}_attn"), ("mlp", None, f"{l}_mlp"),
                                    ("head", 0, f"L{l}H0")]:
            i = effects.labels.index(label)
            ablated = model.run(clean, interventions=ablation(
                model, component, l, h, "mean", reference=[corrupted, clean]))
            assert np.isclose(effects.total[i], base - metric(ablated.logits), atol=1e-10), \
                f"{label}: total effect is not the metric's drop under mean ablation"
            if h is None:
                assert np.isclose(effects.direct[i], attr[label], atol=1e-10), \
                    f"{label}: direct effect is not its attribution term"
    assert len(effects.labels) == n_layers * (2 + n_heads)
