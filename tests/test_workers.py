"""fast/workers.py: work shared among threads with BLAS pinned to one thread.

These check the promises the fast pass and the lens rely on: every share runs once, an error in
any share reaches the caller after all have finished, BLAS's thread count is put back, a share
may itself split (it then runs inline, not deadlocked), and two callers at once both finish.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from minilens.fast import workers


def test_every_share_runs_once_and_at_the_same_time():
    seen, lock = [], threading.Lock()
    all_in = threading.Barrier(3, timeout=30)      # only passes if the 3 shares run at once

    def work(i):
        all_in.wait()
        with lock:
            seen.append((i, threading.get_ident()))
    workers.split(work, 3)
    assert sorted(i for i, _ in seen) == [0, 1, 2], "each share exactly once"
    assert dict(seen)[0] == threading.get_ident(), "share 0 runs in the caller's thread"


def test_an_error_in_a_share_is_raised_after_all_have_finished():
    finished = []

    def work(i):
        if i == 1:
            raise ValueError("share 1 failed")
        threading.Event().wait(0.05)
        finished.append(i)
    with pytest.raises(ValueError, match="share 1 failed"):
        workers.split(work, 3)
    assert sorted(finished) == [0, 2], "the other shares ran to the end"


@pytest.mark.skipif(workers._BLAS is None, reason="no OpenBLAS to pin in this numpy")
def test_blas_is_pinned_inside_and_restored_after():
    before = workers._BLAS[1]()
    inside = []
    workers.split(lambda i: inside.append(workers._BLAS[1]()), 2)
    assert inside == [1, 1], f"BLAS threads inside the workers: {inside}"
    assert workers._BLAS[1]() == before, "BLAS's thread count was not put back"


def test_a_share_that_splits_runs_its_shares_inline():
    out = np.zeros((2, 2))

    def outer(i):
        def inner(j):
            out[i, j] = 10 * i + j
        workers.split(inner, 2)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (workers.split(outer, 2), done.set()), daemon=True)
    thread.start()
    assert done.wait(30), "a split inside a worker deadlocked"
    assert np.array_equal(out, [[0, 1], [10, 11]])


def test_two_callers_at_once_both_finish():
    results = {}

    def caller(name):
        parts = [0, 0]
        def work(i):
            parts[i] = float((np.ones((200, 200)) @ np.ones((200, 200)))[0, 0])
        workers.split(work, 2)
        results[name] = parts
    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"a": [200.0, 200.0], "b": [200.0, 200.0]}


def test_shares_and_balance():
    assert workers.shares(10, 3) == [slice(0, 3), slice(3, 7), slice(7, 10)]
    dealt = workers.balanced([1, 2, 3, 4], 2)
    assert sorted(sum(x for x in d) for d in ([[1, 2, 3, 4][i] for i in d] for d in dealt)) \
        == [5, 5], f"costs 1..4 in two workers of 5 each, got {dealt}"


def test_in_runs_cuts_in_order_and_nearly_evenly():
    assert workers.in_runs([1, 1, 1, 1], 2) == [[0, 1], [2, 3]]
    assert workers.in_runs([3, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    assert workers.in_runs([5, 1, 1, 1, 1, 1], 3) == [[0], [1, 2], [3, 4, 5]]
    assert workers.in_runs([2, 2], 1) == [[0, 1]]
    assert workers.in_runs([], 2) == [[], []]
    assert workers.in_runs([0, 0, 0], 2) == [[0, 1, 2], []]
    costs = list(range(1, 40))
    runs = workers.in_runs(costs, 4)
    assert sum(runs, []) == list(range(39)), "every item once, in order"
    totals = [sum(costs[i] for i in run) for run in runs]
    assert max(totals) - min(totals) <= 2 * max(costs), totals


@pytest.mark.parametrize("value, wanted", [(None, 0), ("", 0), ("0", 0), ("1", 1), ("3", 3)])
def test_minilens_workers_is_read_as_a_count(value, wanted):
    assert workers.workers_wanted(value) == wanted


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_bad_minilens_workers_warns_and_means_one_per_core(value):
    with pytest.warns(UserWarning, match="MINILENS_WORKERS"):
        assert workers.workers_wanted(value) == 0
