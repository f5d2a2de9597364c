"""The performance paths compute the same numbers as the plain equations they replace (issue 6).

Each fast path is checked against the textbook form, written out here in one line, on inputs where
the fast path's special cases all occur: several query blocks (a block size smaller than n_seq), a
sliding window that drops whole key blocks, soft-capping; a lens split over several threads; a model
that widens its layers afresh on every use. No timing is measured here: tests/benchmarks/run.py
does.
"""
import math

import numpy as np
import pytest

import minilens as ml
from minilens import ops
from minilens.analysis import lens
from minilens.fast import forward as model, kernels


def textbook_attention(q, k, v, scale, softcap=None, window=None):
    """softmax(q k^T * scale + mask) v, all at once.  q, k, v [n_heads, n_seq, d_head]"""
    scores = q @ np.swapaxes(k, -1, -2) * scale
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    scores[..., model.causal_mask(q.shape[-2], window)] = -np.inf
    pattern = ops.softmax(scores)
    return pattern, np.swapaxes(pattern @ v, -3, -2)


@pytest.mark.parametrize("window, softcap", [(None, None), (5, None), (None, 3.0), (7, 2.0)])
@pytest.mark.parametrize("block", [1, 4, 64])
@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("size", [1, 300])
def test_blocked_causal_attention_equals_the_textbook_form(block, window, softcap, group, size):
    """fast.attend (query blocks, grouped queries, the mask only where it can bite) against
    softmax(q k^T * scale + mask) v over repeated kv heads, all at once. size 300 makes scores of
    about 1000, past where exp overflows even in float64: the softmax must subtract the max
    there, and may skip it at size 1 (pattern_rows's bound)."""
    rng = np.random.default_rng(0)
    n_kv, n_seq, d_head = 2, 19, 8
    q = size * rng.standard_normal((n_seq, n_kv * group, d_head))   # float64: equal to rounding
    k, v = (rng.standard_normal((n_seq, n_kv, d_head)) for _ in range(2))
    k_T = np.ascontiguousarray(np.moveaxis(k, -3, -1))       # [n_kv, d_head, n_seq]
    v_g = np.ascontiguousarray(np.swapaxes(v, -3, -2))       # [n_kv, n_seq, d_head]
    z = np.full_like(q, np.nan)
    blocks = list(model.attention_blocks(n_seq, window, block))
    mask = model.causal_mask(n_seq, window)
    for half in (blocks[::2], blocks[1::2]):                 # as two workers would
        model.attend(q, k_T, v_g, z, group, 0.35, softcap, window, mask, half)
    pattern = model.attention_pattern(q, k, group, 0.35, softcap, window, block)
    ref_pattern, ref_z = textbook_attention(
        np.swapaxes(q, 0, 1), np.swapaxes(ops.gqa_repeat(k, group), 0, 1),
        np.swapaxes(ops.gqa_repeat(v, group), 0, 1), 0.35, softcap, window)
    # 1e-12: float64, and the only differences are the order of the softmax's sums over fewer
    # zeros, and the max not subtracted where the scores are small.
    assert np.allclose(pattern, ref_pattern, rtol=0, atol=1e-12), \
        "blocked attention: does each block see keys lo..stop-1, and is the masked rest exactly 0?"
    assert np.allclose(z, ref_z, rtol=0, atol=1e-12 * size), (
        "blocked attention: is z written in [n_seq, n_heads, d_head], head h = kv * group + g?")
    assert np.all(pattern[:, np.triu_indices(19, 1)[0], np.triu_indices(19, 1)[1]] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_sequence_decides_its_own_softmax(dtype):
    """pattern_rows skips subtracting the max where a kv head's scores are bounded small, and
    decides per sequence and kv head: in a batch of one sequence with large scores in one kv head
    and one with large scores in all, each sequence gets the bits it gets alone, attended and
    derived (attention_pattern), so a batch shared among workers by sequences or by rows records
    the pattern its z was made from; and every pattern is the textbook softmax's."""
    rng = np.random.default_rng(2)
    n_kv, group, n_seq, d_head = 2, 2, 21, 8
    q = rng.standard_normal((2, n_seq, n_kv * group, d_head)).astype(dtype)
    q[1] *= dtype(200)                              # scores of hundreds: the max must go first
    q[0, :, :group] *= dtype(200)                   # ... and in sequence 0, for kv head 0 only
    k, v = (rng.standard_normal((2, n_seq, n_kv, d_head)).astype(dtype) for _ in range(2))
    k_T = np.ascontiguousarray(np.moveaxis(k, -3, -1))
    v_g = np.ascontiguousarray(np.swapaxes(v, -3, -2))
    mask, blocks = model.causal_mask(n_seq), list(model.attention_blocks(n_seq, None, 8))
    scale = dtype(0.35)
    z_batch = np.full_like(q, np.nan)
    model.attend(q, k_T, v_g, z_batch, group, scale, None, None, mask, blocks)
    pattern_batch = model.attention_pattern(q, k, group, scale, None, None, 8)
    for b in range(2):
        z_alone = np.full_like(q[b], np.nan)
        model.attend(q[b], k_T[b], v_g[b], z_alone, group, scale, None, None, mask, blocks)
        assert np.array_equal(z_batch[b], z_alone), f"sequence {b}: z differs in the batch"
        assert np.array_equal(pattern_batch[b],
                              model.attention_pattern(q[b], k[b], group, scale, None, None, 8)), (
            f"sequence {b}: the derived pattern differs in the batch")
        assert np.all(np.isfinite(pattern_batch[b])), f"sequence {b}: the softmax overflowed"
        ref_pattern, _ = textbook_attention(
            np.swapaxes(q[b], 0, 1).astype(np.float64),
            np.swapaxes(ops.gqa_repeat(k[b], group), 0, 1).astype(np.float64),
            np.swapaxes(ops.gqa_repeat(v[b], group), 0, 1).astype(np.float64), float(scale))
        assert np.allclose(pattern_batch[b], ref_pattern, rtol=0,
                           atol=1e-12 if dtype == np.float64 else 1e-5), (
            f"sequence {b}: the pattern differs from the textbook softmax")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_derived_pattern_is_bit_for_bit_the_one_z_was_made_from(monkeypatch, tmp_path, dtype):
    """The forward pass keeps one block of pattern rows at a time; the trace recomputes the pattern
    when it is read. Every block the forward pass used is captured here and must equal the
    trace's."""
    from factories import make_llama
    monkeypatch.setattr(model, "ATTENTION_BLOCK", 8)
    monkeypatch.setattr(model, "WORKER_MIN_ROWS", 1 << 40)        # one worker: blocks of 8
    folder, _ = make_llama(tmp_path, n_layers=2, n_kv_heads=2)
    m = ml.load(folder, dtype=dtype)
    used = []                                   # (start, stop, lo, rows): 3 blocks per layer
    pattern_rows = model.pattern_rows

    def capture(q_g, k_T, softcap, mask, start, stop, lo, window, k_sq, out):
        rows = pattern_rows(q_g, k_T, softcap, mask, start, stop, lo, window, k_sq, out)
        used.append((start, stop, lo, rows.copy()))
        return rows

    monkeypatch.setattr(model, "pattern_rows", capture)
    ids = np.arange(20) % 37
    trace = m.run(ids)
    assert isinstance(trace._store["pattern", 0], ml.trace.Derived), (
        "the pattern should not be computed by run()")
    monkeypatch.setattr(model, "pattern_rows", pattern_rows)
    assert len(used) == 2 * 3, "20 tokens in blocks of 8 are 3 blocks per layer"
    by_layer = [used[:3], used[3:]]
    n_heads = m.cfg.n_heads
    for l, blocks in enumerate(by_layer):
        pattern = trace["pattern", l]
        assert trace["pattern", l] is pattern, "a derived value is computed once, then kept"
        for start, stop, lo, rows in blocks:        # rows: [n_kv, group * block, keys]
            rows = rows.reshape(n_heads, stop - start, stop - lo)
            assert np.array_equal(pattern[:, start:stop, lo:stop], rows), (
                f"layer {l}, queries {start}..{stop}")
        assert np.all(pattern[:, np.triu_indices(20, 1)[0], np.triu_indices(20, 1)[1]] == 0)


def test_fused_gelu_equals_the_textbook_formula():
    x = np.linspace(-8, 8, 1001)
    textbook = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    assert np.allclose(kernels.gelu_new(x), textbook, rtol=1e-14, atol=1e-15), (
        "fused GELU: is c factored correctly?")
    assert np.allclose(ops.gelu_new(x), textbook, rtol=1e-14, atol=1e-15), (
        "ops.gelu_new is the formula")
    assert kernels.gelu_new(x.astype(np.float32)).dtype == np.float32


def test_in_place_softmax_equals_softmax():
    x = np.random.default_rng(1).standard_normal((4, 7, 9))
    expected = ops.softmax(x)
    assert np.array_equal(kernels.softmax_in_place(x.copy()), expected)
    # told that no |x| exceeds 4, it skips subtracting the max: the same to rounding
    assert np.allclose(kernels.softmax_in_place(x.copy(), 4.0), expected, rtol=1e-14, atol=0)
    big = (x * 300).astype(np.float32)           # exp(300 * 3) overflows float32: shift needed
    assert np.allclose(kernels.softmax_in_place(big.copy(), np.inf), ops.softmax(big),
                       rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("rotary_dim", [8, 4])          # full and partial rotation of d_head 8
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rope_in_place_and_into_out_equal_the_textbook_rotation(rotary_dim, dtype):
    """apply_rope writes into out, which the forward pass makes the array the trace keeps
    (out=x)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 11, 3, 8)).astype(dtype)    # [batch, n_seq, n_heads, d_head]
    angles = np.outer(np.arange(11), rng.uniform(0.1, 1.0, rotary_dim // 2))
    cos, sin = (np.concatenate([f(angles)] * 2, axis=-1).astype(dtype) for f in (np.cos, np.sin))
    half, r = rotary_dim // 2, rotary_dim
    x1, x2 = x[..., :half], x[..., half:r]
    c, s = cos[:, None, :], sin[:, None, :]
    textbook = np.concatenate([x1 * c[..., :half] - x2 * s[..., :half],
                               x2 * c[..., half:] + x1 * s[..., half:], x[..., r:]], axis=-1)
    fresh = kernels.apply_rope(x, cos, sin)
    in_place = x.copy()
    assert kernels.apply_rope(in_place, cos, sin, out=in_place) is in_place
    assert np.array_equal(ops.apply_rope(x, cos, sin), textbook), (
        "ops.apply_rope is the textbook rotation")
    # The rotation is x_rot * cos + rotate_half(x_rot) * sin, rounded the same way in every form.
    assert np.array_equal(fresh, textbook), (
        "RoPE: does dim i pair with i + rotary_dim / 2 (half-split)?")
    assert np.array_equal(in_place, fresh), (
        "in-place RoPE: was rotate_half(x) copied before x was overwritten?")
    assert fresh.dtype == dtype


@pytest.mark.parametrize("act", sorted(ops.ACTIVATIONS))
def test_activations_into_out_equal_the_fresh_result(act):
    x = np.linspace(-6, 6, 301, dtype=np.float32).reshape(7, 43)
    out = np.empty_like(x)
    assert kernels.ACTIVATIONS[act](x, out=out) is out
    assert np.array_equal(out, kernels.ACTIVATIONS[act](x)) and out.dtype == np.float32
    x64 = x.astype(np.float64)
    assert np.allclose(kernels.ACTIVATIONS[act](x64), ops.ACTIVATIONS[act](x64),
                       rtol=1e-14, atol=1e-15), (
        f"{act}: the in-place kernel and ops.py's equation differ")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from factories import make_gpt2
    folder, _ = make_gpt2(tmp_path_factory.mktemp("gpt2"), n_layers=3, d_vocab=257)
    return folder


def test_uncached_layers_give_identical_numbers_and_keep_nothing(gpt2):
    ids = np.arange(40) % 257
    cached, uncached = ml.load(gpt2, cache_layers=True), ml.load(gpt2, cache_layers=False)
    assert np.array_equal(cached.run(ids).logits, uncached.run(ids).logits)
    assert uncached.layers._cache == {}, "cache_layers=False must not keep widened layers"
    assert len(cached.layers._cache) == 3


def test_small_models_cache_their_layers_by_default(gpt2):
    assert ml.load(gpt2).layers.cache is True


def test_lens_in_workers_equals_one_worker(gpt2, monkeypatch):
    """The lens's positions shared among workers (fast/workers.py, BLAS pinned to one thread)
    give what one worker gives. A worker writing another's positions, or a share's chunk offsets
    counted from 0 instead of from the share's start, breaks it."""
    trace = ml.load(gpt2, dtype=np.float64).run(np.arange(50) % 257)
    monkeypatch.setattr(lens, "CHUNK_ELEMENTS", 4 * 257 * 7)  # several chunks, uneven last
    monkeypatch.setattr(lens, "WORKERS", 1)
    one = ml.logit_lens(trace, target=5, top_k=3)
    monkeypatch.setattr(lens, "WORKERS", 3)
    # pieces of 3 positions (of all the lens's rows), the last uneven
    monkeypatch.setattr(lens, "STAT_ROWS", 3 * len(one.labels))
    three = ml.logit_lens(trace, target=5, top_k=3)
    for name in ("top_ids", "target_rank"):
        assert np.array_equal(getattr(one, name), getattr(three, name)), (
            f"the lens in 3 workers differs from 1 worker in {name}")
    for name in ("top_probs", "target_logit", "target_prob", "entropy", "kl_to_final"):
        np.testing.assert_allclose(getattr(three, name), getattr(one, name), rtol=1e-12,
                                   atol=1e-12, err_msg=f"the lens in 3 workers differs in {name}")


def test_the_activation_names_are_one_list():
    from minilens.config import ACTIVATION_NAMES
    assert set(ops.ACTIVATIONS) == set(kernels.ACTIVATIONS) == set(ACTIVATION_NAMES), (
        "config.ACTIVATION_NAMES, ops.ACTIVATIONS and fast.kernels.ACTIVATIONS "
        "must name the same activations")


@pytest.mark.parametrize("n_batch", [1, 2, 5])
def test_workers_by_rows_and_by_sequences_equal_one_worker(gpt2, monkeypatch, n_batch):
    """Two workers share one sequence by rows and query blocks, and a batch of at least two
    sequences by sequences (fast/forward.py). Every key of every sequence must equal one
    worker's, to rounding (float64). A worker given another's rows or sequences, or a share left
    undone, shows as an O(1) difference or as NaN (the pool's memory is not zeroed)."""
    m = ml.load(gpt2, dtype=np.float64)
    ids = np.random.default_rng(n_batch).integers(0, 257, (n_batch, 37))
    monkeypatch.setattr(model.workers, "n_workers", lambda: 1)
    one = m.run_batch(ids)
    monkeypatch.setattr(model.workers, "n_workers", lambda: 2)
    monkeypatch.setattr(model, "WORKER_MIN_ROWS", 0)
    monkeypatch.setattr(model, "ATTENTION_BLOCK", 4)
    m.pool = None                   # fresh memory: a share left undone cannot find one's values
    two = m.run_batch(ids)
    for b in range(n_batch):
        np.testing.assert_allclose(two[b].logits, one[b].logits, rtol=1e-12, atol=1e-12,
                                   err_msg=f"sequence {b}: two workers' logits differ")
        for key in one[b].keys():
            ref = np.asarray(one[b][key])
            err = np.abs(np.asarray(two[b][key]) - ref).max() / max(1.0, np.abs(ref).max())
            assert err <= 1e-12, f"sequence {b}, {key}: two workers differ from one by {err:.3g}"
