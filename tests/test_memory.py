"""The model's pool of recycled memory (minilens/memory.py) changes no number and loses no value.

A trace's arrays live in memory the model recycles once they are unreachable. These tests check
that the memory is reused, that an array still referenced (even through a small view) is never
handed out again, that the pool keeps no more than its bound, and that every recorded value is bit
for bit what the forward pass computes without a pool. No timing is measured here.
"""
import gc
import os

import numpy as np
import pytest

import minilens as ml
from minilens.fast.memory import ArrayPool, PooledMemory
from random_checkpoints import gpt2_config, llama_config, write_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    gpt2 = ml.load(write_checkpoint(tmp / "gpt2", gpt2_config(n_layers=3, d_model=32, n_heads=4)))
    llama = ml.load(write_checkpoint(tmp / "llama",
                                     llama_config(n_layers=3, n_heads=4, n_kv_heads=2)))
    return {"gpt2": gpt2, "llama": llama}


IDS = np.arange(1, 40) % 101


def addresses(trace) -> set[int]:
    """Where the trace's pooled arrays start in memory."""
    values = [trace.logits] + [trace[key] for key in trace.keys()
                               if not (isinstance(key, tuple) and key[0] == "pattern")]
    return {a.__array_interface__["data"][0] for a in values if isinstance(a.base, PooledMemory)}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_recorded_value_equals_the_one_computed_without_a_pool(models, family):
    m = models[family]
    pooled = m.run(IDS)
    pool, m.pool = m.pool, None
    try:
        plain = m.run(IDS)
        m.free_memory()                                    # does nothing without a pool
    finally:
        m.pool = pool
    assert sorted(map(str, pooled.keys())) == sorted(map(str, plain.keys()))
    for key in plain.keys():
        assert np.array_equal(pooled[key], plain[key]), (
            f"{key}: the pooled forward pass wrote other numbers")
        assert pooled[key].dtype == plain[key].dtype and pooled[key].shape == plain[key].shape


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_dropped_trace_s_memory_serves_the_next_run(models, family):
    m = models[family]
    m.free_memory()
    first = m.run(IDS)
    used = addresses(first)
    want = first.logits.copy()
    del first
    gc.collect()
    assert m.pool.free_bytes > 0, "the dropped trace's arrays did not come back to the pool"
    second = m.run(IDS)
    assert len(addresses(second) & used) >= len(used) // 2, (
        "the next run did not reuse the recycled memory")
    assert np.array_equal(second.logits, want)


def test_memory_still_in_use_is_never_handed_out_again(models):
    m = models["llama"]
    trace = m.run(IDS)
    kept_view = trace["resid_post", 1][-3:, ::2]  # a small strided view keeps its whole array
    kept_logits = trace.logits[5]
    kept_q = trace["q", 0]
    want = [kept_view.copy(), kept_logits.copy(), kept_q.copy()]
    del trace
    gc.collect()
    # runs that draw on the pool and overwrite what they get
    for _ in range(3):
        m.run(IDS[::-1].copy())
        m(IDS[:20])
    for got, expected in zip([kept_view, kept_logits, kept_q], want):
        assert np.array_equal(got, expected), (
            "an array still referenced was recycled and overwritten")


def test_logits_only_runs_and_names_subsets_use_the_pool_too(models):
    m = models["gpt2"]
    m.free_memory()
    logits = m(IDS)
    assert isinstance(logits.base, PooledMemory)
    temporaries = m.pool.free_bytes  # the values the run did not keep are back already
    assert temporaries > 0
    del logits
    gc.collect()
    assert m.pool.free_bytes == temporaries + len(IDS) * m.cfg.d_vocab * 4
    only = m.run(IDS, names={"resid_pre"})
    assert only.keys() == [("resid_pre", l) for l in range(m.cfg.n_layers)]
    assert all(isinstance(only["resid_pre", l].base, PooledMemory)
               for l in range(1, m.cfg.n_layers))


def test_batch_traces_are_views_that_keep_their_memory(models):
    m = models["llama"]
    batch = np.stack([IDS, IDS[::-1]])
    first, second = m.run_batch(batch)
    want = second["z", 2].copy()
    del first
    gc.collect()
    m.run_batch(batch[::-1].copy())
    assert np.array_equal(second["z", 2], want)


def test_the_pool_keeps_no_more_than_its_bound_and_clears():
    pool = ArrayPool(max_free_bytes=10_000)
    arrays = [pool.empty((1000,), np.float32) for _ in range(4)]  # 4 x 4000 bytes
    big = pool.empty((5000,), np.float32)          # 20000 bytes: more than the bound
    del arrays, big
    gc.collect()
    assert pool.free_bytes == 8000, (
        "two 4000-byte maps fit under 10000 bytes; the others must be dropped")
    again = pool.empty((1000,), np.float32)
    assert pool.free_bytes == 4000 and again.shape == (1000,) and again.dtype == np.float32
    pool.clear()
    assert pool.free_bytes == 0
    assert pool.empty((0, 3), np.float64).shape == (0, 3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is a Unix call")
def test_a_forked_child_writes_to_its_own_copy(models):
    """mmap(-1, n) is MAP_SHARED by default on Unix: a child's runs would write into the parent's
    arrays."""
    m = models["gpt2"]
    trace = m.run(IDS)
    want = trace["resid_post", 0].copy()
    del_me = m.run(IDS)
    del del_me
    gc.collect()  # the pool now holds free maps the child will draw on
    pid = os.fork()
    if pid == 0:  # the child: overwrite everything it can reach, then leave
        try:
            trace["resid_post", 0][...] = 7.0
            for _ in range(2):
                m.run(IDS[::-1].copy())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert np.array_equal(trace["resid_post", 0], want), (
        "the child's writes reached the parent's trace")
    again = m.run(IDS)
    assert np.array_equal(again["resid_post", 0], want)


def test_a_growing_sequence_does_not_pile_up_memory(models):
    """model.generate runs one token longer each time: the pool keeps about one run's worth, not
    every length's."""
    m = models["gpt2"]
    m.free_memory()
    for n in range(5, 40):
        m(IDS[:n])
        gc.collect()
        assert m.pool.free_bytes <= max(m.pool.run_bytes, m.pool.last_run_bytes)
    one_run = m.pool.run_bytes
    assert 0 < m.pool.free_bytes <= one_run, (
        f"the pool keeps {m.pool.free_bytes} bytes after runs of {one_run}")
    sizes = m.pool.free_bytes
    m(IDS[:39])  # the same length again: served from the pool
    gc.collect()
    assert m.pool.free_bytes == sizes
    m.generate(IDS[:5], n_new=10)
    gc.collect()
    assert m.pool.free_bytes <= m.pool.run_bytes


def reach(route: str, logits: np.ndarray):
    """(something that reaches the logits' memory by ``route``, a function reading its values),
    each holding only what the route gives: not ``logits`` itself, unless the route does."""
    base, dtype, shape = logits.base, logits.dtype, logits.shape
    if route == "base":
        if isinstance(base, PooledMemory):
            return base, lambda: np.asarray(base).copy()
        return base, lambda: np.frombuffer(base, dtype).reshape(shape).copy()
    if route == "frombuffer":
        try:
            held = np.frombuffer(base, dtype)
        except TypeError:                               # the base exports no buffer
            held = np.frombuffer(logits, dtype)         # the array itself: it holds the memory
        return held, lambda: held.reshape(shape).copy()
    if route == "memoryview":
        try:
            held = memoryview(base)
        except TypeError:
            held = memoryview(logits)
        return held, lambda: np.frombuffer(held, dtype).reshape(shape).copy()
    from _torch import import_torch
    torch, _ = import_torch()
    try:
        held = torch.frombuffer(base, dtype=torch.float32)
    except (TypeError, ValueError):
        held = torch.from_numpy(logits)
    return held, lambda: held.numpy().reshape(shape).copy()


@pytest.mark.parametrize("route", ["base", "frombuffer", "memoryview", "torch"])
def test_recycled_memory_cannot_be_reached_past_its_finalizer(models, route):
    """Finding: the pool's memory could be reached past its finalizer. Hold `trace.logits.base`
    (the mmap) or `np.frombuffer(...)` of it, drop the trace, and run again: the held buffer
    silently showed another run's logits. Each route (.base, np.frombuffer, memoryview,
    torch.frombuffer / torch.from_numpy) must either not reach the memory or keep it out of the
    pool."""
    m = models["gpt2"]
    m.free_memory()
    trace = m.run(IDS)
    held, read = reach(route, trace.logits)
    want = trace.logits.copy()
    del trace
    gc.collect()
    for _ in range(3):                  # runs that draw on the pool and overwrite what they get
        m.run(IDS[::-1].copy())
        m(IDS)
        m(IDS[::-1].copy())
    assert np.array_equal(read(), want), (
        f"memory held through {route} was recycled: it shows another run's numbers")
    del held
