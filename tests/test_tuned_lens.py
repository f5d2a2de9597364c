"""The tuned lens (analysis/tuned_lens.py, issue 16): its maths, its limits, its files.

Small random models (tests/random_checkpoints.py, no torch) in float64, so that each check can
be tight:
- the hand-written KL gradient against central finite differences, to 1e-6 relative. With
  h = 1e-5 the difference quotient's own error is about h^2 |f'''| ~ 1e-10 plus rounding
  1e-16 / h ~ 1e-11, far inside 1e-6; a wrong term in the backward pass is off by O(1).
- ridge 0 against np.linalg.lstsq on the same tokens, to 1e-8: the fit solves the normal
  equations, which square the condition number of [X, 1] (here ~1e2, so ~1e4, costing ~1e-12).
- infinite ridge with no refinement against the logit lens, exactly: x @ I + 0 == x in IEEE.
The measured targets on SmolLM2 are in tests/benchmarks/tuned_lens.py (run by hand).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import minilens as ml
from minilens import CheckpointError, InputError
from minilens.analysis.lens import lens_logits
from minilens.analysis.tuned_lens import (
    LensFitError,
    Streams,
    Translators,
    evaluate_lens,
    fit_affine_lens,
    kl_and_gradient,
    load_translators,
    log_softmax,
    record,
    record_streams,
    refine_lens,
    token_windows,
)
from minilens.show.lens_plots import evaluation_table, kl_plot_html
from random_checkpoints import gpt2_config, llama_config, write_checkpoint

D_VOCAB = 61


def config(family: str, **kw) -> dict:
    if family == "gpt2":                                   # LayerNorm with a bias, tied W_U
        return gpt2_config(d_vocab=D_VOCAB, **kw)
    if family == "gemma2":                                 # RMSNorm (1 + w) and a final soft-cap
        return llama_config(model_type="gemma2", d_vocab=D_VOCAB, final_logit_softcapping=3.0,
                            attn_logit_softcapping=5.0, query_pre_attn_scalar=8,
                            sliding_window=4, **kw)
    return llama_config(d_vocab=D_VOCAB, **kw)             # RMSNorm, untied W_U


def make(tmp_path, family: str = "llama", dtype=np.float64, **kw):
    folder = write_checkpoint(tmp_path / family, config(family, **kw), seed=1)
    return ml.load(folder, dtype=dtype)


def texts(n: int = 4, n_seq: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, D_VOCAB, n_seq) for _ in range(n)]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make(tmp_path_factory.mktemp("tl"))


# ------------------------------------------------------------------------------------------
# The gradient
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_kl_gradient_matches_central_differences(tmp_path, family):
    model = make(tmp_path, family)
    trace = model.run(texts(1, 24, seed=5)[0])
    x, log_p = trace["resid_pre", 1], log_softmax(trace.logits)
    rng = np.random.default_rng(2)
    d = model.cfg.d_model
    A = np.eye(d) + 0.2 * rng.standard_normal((d, d))
    b = 0.3 * rng.standard_normal(d)
    loss, dA, db = kl_and_gradient(model, A, b, x, log_p)
    # the loss is the lens's KL: the same forward as lens_logits on x A + b
    log_q = log_softmax(lens_logits(model, x @ A + b))
    assert math.isclose(loss, float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1))),
                        rel_tol=1e-12), "the loss is not mean KL(p_final || p_lens)"

    def f(A_, b_):
        return kl_and_gradient(model, A_, b_, x, log_p)[0]

    h = 1e-5
    entries = [tuple(rng.integers(0, d, 2)) for _ in range(12)] + [(0, 0), (d - 1, d - 1)]
    for i, j in entries:
        E = np.zeros_like(A)
        E[i, j] = h
        fd = (f(A + E, b) - f(A - E, b)) / (2 * h)
        assert abs(fd - dA[i, j]) <= 1e-6 * max(abs(fd), 1e-3 * np.abs(dA).max()), (
            f"{family}: dKL/dA[{i},{j}] = {dA[i, j]:.10g}, finite differences {fd:.10g}. "
            f"Through the {model.cfg.norm} final norm: is the mean(dy_hat * y_hat) term there "
            f"(and, for LayerNorm, mean(dy_hat))? Is tanh' = 1 - (z / cap)^2 applied?")
    for j in range(0, d, 5):
        e = np.zeros(d)
        e[j] = h
        fd = (f(A, b + e) - f(A, b - e)) / (2 * h)
        assert abs(fd - db[j]) <= 1e-6 * max(abs(fd), 1e-3 * np.abs(db).max()), (
            f"{family}: dKL/db[{j}] = {db[j]:.10g}, finite differences {fd:.10g}: "
            f"db is the sum over tokens of dy")


# ------------------------------------------------------------------------------------------
# The affine fit
# ------------------------------------------------------------------------------------------

def test_ridge_zero_is_least_squares(llama):
    data = texts(4, 40)
    lens = fit_affine_lens(llama, data, ridge=0, progress=None)
    runs = [llama.run(ids) for ids in data]
    Y = np.concatenate([t["resid_final"] for t in runs])
    for l in range(llama.cfg.n_layers):
        X = np.concatenate([t["resid_pre", l] for t in runs])
        Z = np.concatenate([X, np.ones((len(X), 1))], axis=1)
        W = np.linalg.lstsq(Z, Y, rcond=None)[0]
        err = max(np.abs(lens.A[l] - W[:-1]).max(), np.abs(lens.b[l] - W[-1]).max())
        assert err <= 1e-8, (f"layer {l}: ridge 0 differs from lstsq by {err:.2e}: are Z^T Z and "
                             f"Z^T Y summed over every window, with the bias column?")
    assert lens.info["tokens"] == 160 and lens.info["ridge"] == [0.0, 0.0]


def test_ridge_moves_from_least_squares_to_the_identity(llama):
    data = texts(4, 40)
    gaps = [np.abs(fit_affine_lens(llama, data, ridge=r, progress=None).A - np.eye(32)).max()
            for r in (0, 1e-2, 1, 100)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.1 * gaps[0], (
        f"|A - I| should shrink as the ridge grows: {gaps}")


def test_ridge_is_chosen_on_held_out_windows_and_reported(llama):
    lens = fit_affine_lens(llama, texts(12, 40), seq_len=20, progress=None)
    grid, table = lens.info["ridge_grid"], np.array(lens.info["ridge_mse"])
    assert table.shape == (llama.cfg.n_layers, len(grid))
    for l, r in enumerate(lens.info["ridge"]):
        assert r == grid[int(np.argmin(table[l]))], "the ridge is the held-out argmin"
    assert lens.info["heldout_tokens"] == 2 * 20 and lens.info["tokens"] == 12 * 40
    few = fit_affine_lens(llama, texts(3, 20), seq_len=20, progress=None)
    assert few.info["heldout_tokens"] == 20, "with fewer than 10 windows the last is held out"


def test_infinite_ridge_and_no_steps_is_the_logit_lens_exactly(tmp_path):
    for dtype in (np.float64, np.float32):
        model = make(tmp_path / str(np.dtype(dtype)), dtype=dtype)
        lens = refine_lens(model, fit_affine_lens(model, texts(), ridge=math.inf, progress=None),
                           texts(), steps=0, progress=None)
        trace = model.run(texts(1, 30, seed=9)[0])
        plain, tuned = ml.logit_lens(trace), ml.logit_lens(trace, translators=lens)
        for name in ("top_ids", "top_probs", "target_logit", "target_prob", "target_rank",
                     "entropy", "kl_to_final"):
            assert np.array_equal(getattr(plain, name), getattr(tuned, name)), (
                f"{dtype.__name__} {name}: A = I, b = 0 must be the logit lens bit for bit")
        assert np.array_equal(plain.logits("0_pre"), tuned.logits("0_pre"))


def test_translators_read_the_pre_rows_and_leave_final_post(llama):
    rng = np.random.default_rng(4)
    L, d = llama.cfg.n_layers, llama.cfg.d_model
    lens = Translators(np.eye(d) + 0.1 * rng.standard_normal((L, d, d)),
                       rng.standard_normal((L, d)), {})
    trace = llama.run(texts(1, 20)[0])
    result = ml.logit_lens(trace, translators=lens)
    for l in range(L):
        want = lens_logits(llama, trace["resid_pre", l] @ lens.A[l] + lens.b[l])
        assert np.allclose(result.logits(f"{l}_pre"), want, rtol=0, atol=1e-12)
        q = np.exp(log_softmax(want))
        assert np.allclose(result.top_probs[l, :, 0], q.max(-1), atol=1e-12)
    assert np.array_equal(result.logits("final_post"), trace.logits), "final_post is the model"
    assert np.all(result.kl_to_final[-1] == 0)


# ------------------------------------------------------------------------------------------
# Refinement
# ------------------------------------------------------------------------------------------

def test_refinement_lowers_the_kl_it_minimises(llama):
    data = texts(8, 40)
    affine = fit_affine_lens(llama, data, ridge=math.inf, progress=None)   # start: logit lens
    tuned = refine_lens(llama, affine, data, steps=30, batch=64, lr=3e-3, progress=None)
    before = evaluate_lens(llama, affine, data, progress=None)
    after = evaluate_lens(llama, tuned, data, progress=None)
    assert after.mean_kl() < 0.9 * before.mean_kl(), (before.kl, after.kl)
    assert tuned.info["kind"] == "tuned" and tuned.info["steps"] == 30


def test_a_nan_stops_refinement_naming_layer_and_step(llama):
    L = llama.cfg.n_layers
    trace = llama.run(texts(1, 20)[0])
    pre = np.stack([trace["resid_pre", l] for l in range(L)], axis=1)       # [n, L, d]
    pre[:, 1, 3] = np.nan
    streams = Streams(pre, np.array(trace["resid_final"]))
    with pytest.raises(LensFitError, match=r"layer 1, step 1: .*resid_pre holds NaN"):
        refine_lens(llama, Translators.identity(llama), streams, steps=3, batch=8,
                    progress=None)


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------

def test_save_and_load_round_trip(llama, tmp_path):
    lens = fit_affine_lens(llama, texts(), ridge=0.01, data="four random texts", progress=None)
    path = lens.save(tmp_path / "lens.safetensors", dtype=np.float64)
    back = load_translators(path, llama)
    assert np.array_equal(back.A, lens.A) and np.array_equal(back.b, lens.b)
    assert back.info["data"] == "four random texts" and back.info["family"] == "llama"
    lens.save(tmp_path / "f32.safetensors")                  # float32 by default
    assert np.array_equal(load_translators(tmp_path / "f32.safetensors", llama).A,
                          lens.A.astype(np.float32))


@pytest.mark.parametrize("change", [dict(d_model=48, n_heads=4), dict(n_layers=3)],
                         ids=["d_model", "n_layers"])
def test_translators_for_another_shape_are_refused(llama, tmp_path, change):
    other = make(tmp_path, **change)
    path = fit_affine_lens(other, texts(), ridge=1.0, progress=None).save(tmp_path / "o.st")
    with pytest.raises(CheckpointError, match="layers of d_model"):
        load_translators(path, llama)
    with pytest.raises(InputError, match="fit .or load. translators for this model"):
        ml.logit_lens(llama.run(texts(1, 10)[0]),
                      translators=fit_affine_lens(other, texts(), ridge=1.0, progress=None))


def test_translators_for_another_family_are_refused(llama, tmp_path):
    gpt2 = make(tmp_path, "gpt2", n_layers=2, d_model=32)
    path = Translators.identity(gpt2).save(tmp_path / "g.safetensors")
    with pytest.raises(CheckpointError, match="family 'gpt2' vs 'llama'"):
        load_translators(path, llama)


def test_a_file_that_is_not_translators_is_refused(llama, tmp_path):
    from safetensors.numpy import save_file
    save_file({"W": np.zeros((2, 2), np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="not a minilens translators file"):
        load_translators(tmp_path / "w.safetensors", llama)
    with pytest.raises(InputError, match="no such translators file"):
        load_translators(tmp_path / "missing.safetensors", llama)


# ------------------------------------------------------------------------------------------
# Input
# ------------------------------------------------------------------------------------------

def test_empty_and_too_short_texts_are_refused(llama):
    with pytest.raises(InputError, match="texts is empty"):
        fit_affine_lens(llama, [], progress=None)
    with pytest.raises(InputError, match=r"texts\[1\] is 1 token"):
        fit_affine_lens(llama, [np.arange(10), np.array([3])], progress=None)
    with pytest.raises(InputError, match="texts is empty"):
        evaluate_lens(llama, None, [], progress=None)
    with pytest.raises(InputError, match="needs held-out tokens"):
        fit_affine_lens(llama, [np.arange(10)], progress=None)     # one window, ridge=None
    with pytest.raises(InputError, match="incl_mid=False"):
        ml.logit_lens(llama.run(np.arange(5)), translators=Translators.identity(llama),
                      incl_mid=True)


def test_windows_stop_at_max_tokens(llama):
    windows = token_windows(llama, texts(3, 40), seq_len=16, max_tokens=50)
    assert [len(w) for w in windows] == [16, 16, 8, 10], "the last window is cut short"
    # one token left over makes no window (a lens needs two)
    assert sum(len(w) for w in token_windows(llama, texts(3, 40), 16, max_tokens=41)) == 40
    with pytest.raises(InputError, match="max_tokens must be"):
        token_windows(llama, texts(), max_tokens=1)


def test_windows_start_with_bos_where_the_tokenizer_adds_it():
    model = ml.load("shakespeare-llama")
    text = "To be, or not to be, that is the question. " * 20
    windows = token_windows(model, [text], seq_len=32)
    bos = model.tokenizer.bos_token_id
    assert len(windows) > 2 and all(w[0] == bos and len(w) <= 32 for w in windows)
    assert sum(len(w) - 1 for w in windows) == len(model.to_tokens(text)) - 1


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------

def test_evaluation_agrees_with_the_logit_lens_statistics(llama):
    data = texts(3, 30)
    ev = evaluate_lens(llama, None, data, progress=None)
    lenses = [ml.logit_lens(llama.run(ids)) for ids in data]
    kl = np.concatenate([r.kl_to_final for r in lenses], axis=1).mean(1)
    assert np.allclose(ev.kl, kl, atol=1e-10), "KL: the mean of logit_lens's kl_to_final"
    # cross-entropy: -log p(true next token), over positions that have one
    ce = -np.log(np.concatenate([r.target_prob[:, :-1] for r in lenses], axis=1)).mean(1)
    assert np.allclose(ev.cross_entropy, ce, atol=1e-10)
    agree = np.concatenate([r.top_ids[:, :, 0] == r.top_ids[-1:, :, 0] for r in lenses], 1)
    assert np.array_equal(ev.top1_agreement, agree.mean(1))
    assert ev.kl[-1] == 0 and ev.bias[-1] == 0 and ev.top1_agreement[-1] == 1
    assert np.all(ev.bias >= 0) and np.all(ev.bias <= ev.kl + 1e-12), (
        "the bias (KL of the means) is at most the mean KL: KL is jointly convex")
    assert ev.n_tokens == 90 and ev.n_texts == 3 and ev.kind == "logit"
    same = evaluate_lens(llama, Translators.identity(llama), data, progress=None)
    assert np.array_equal(same.kl, ev.kl)


def test_the_table_and_the_plot(llama):
    ev = evaluate_lens(llama, None, texts(2, 20), progress=None)
    tuned = evaluate_lens(llama, Translators.identity(llama), texts(2, 20), progress=None)
    table = evaluation_table({"logit": ev, "tuned": tuned})
    assert len(table.splitlines()) == 1 + llama.cfg.n_layers + 1 + 1
    assert "logit KL" in table and "tuned bias" in table
    page = kl_plot_html({"logit": ev, "tuned": tuned})
    assert page.count('class="ml-line"') == 2 and page.count("<circle") == 2 * llama.cfg.n_layers
    assert "<script" not in page


# ------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------

def test_fit_lens_then_lens_with_translators_on_the_command_line(tmp_path, capsys):
    from minilens.show.cli import main
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 60)
    out = tmp_path / "lens.safetensors"
    assert main(["fit-lens", "--out", str(out), "--tokens", "600", "--steps", "2", "--batch",
                 "16", "--seq-len", "64", "--heldout", "0", "--text", str(text)]) == 0
    assert capsys.readouterr().out.strip().endswith("lens.safetensors")
    lens = load_translators(out, ml.load("shakespeare-llama"))
    assert lens.info["kind"] == "tuned" and lens.info["data"] == "files: text.txt"
    assert main(["lens", "To be, or not", "--translators", str(out), "--color", "never"]) == 0
    table = capsys.readouterr().out
    assert "0_pre" in table and "final_post" in table
    assert main(["lens", "To be", "--translators", str(out), "--mid"]) == 2
    assert "drop --mid" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_record_streams_batches_windows_as_if_each_ran_alone(tmp_path, family):
    """The fits run several windows per forward pass, the short ones padded on the right. Each
    window's streams must be the ones it has alone: padding that leaked into the real positions
    (a mask that let a query see a later key, a sliding window counted from the padded end) moves
    them by O(1)."""
    model = make(tmp_path, family)
    lengths = [9, 17, 17, 4, 12, 30, 2]
    rng = np.random.default_rng(3)
    windows = [rng.integers(0, D_VOCAB, n) for n in lengths]
    groups = list(record_streams(model, windows, batch_tokens=40))
    # shortest first: [2, 4, 9] (3 x 9 <= 40), [12, 17], [17], [30]
    assert [len(g) for g in groups] == [3, 2, 1, 1], "windows grouped past batch_tokens"
    got = [item for group in groups for item in group]
    assert sorted(i for i, _, _ in got) == list(range(len(windows))), "a window lost or repeated"
    for i, X, Y in got:
        X_alone, Y_alone, _ = record(model, windows[i])
        np.testing.assert_allclose(X, X_alone, rtol=1e-12, atol=1e-12,
                                   err_msg=f"window {i}'s resid_pre differs when batched")
        np.testing.assert_allclose(Y, Y_alone, rtol=1e-12, atol=1e-12,
                                   err_msg=f"window {i}'s resid_final differs when batched")
