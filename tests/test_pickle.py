"""Models and traces cross process boundaries: pickle, copy.deepcopy, multiprocessing, fork
(issue 18, items 4 and 5).

A loaded model pickles as a reference to its files, dtype and options, and is reopened
memory-mapped on the other side; a trace pickles its arrays and that reference. The round trips
are compared bit for bit with runs in this process.
"""

from __future__ import annotations

import copy
import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens.course.bench import HookedAutoConfig, HookedAutoModel
from random_checkpoints import gpt2_config, llama_config, write_checkpoint

IDS = np.arange(1, 40) % 101


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pickle")
    return {"gpt2": write_checkpoint(tmp / "gpt2", gpt2_config(n_layers=3, d_model=32, n_heads=4)),
            "llama": write_checkpoint(tmp / "llama",
                                      llama_config(n_layers=3, n_heads=4, n_kv_heads=2))}


def assert_same_trace(got: ml.Trace, want: ml.Trace) -> None:
    """Every recorded array (the derived pattern included), the ids and the logits, bit for bit."""
    assert sorted(map(str, got.keys())) == sorted(map(str, want.keys()))
    assert np.array_equal(got.ids, want.ids) and got.intervened == want.intervened
    for key in ["logits", *want.keys()]:
        a, b = got[key], want[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert np.array_equal(a, b, equal_nan=True), f"{key} differs after the round trip"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_pickled_trace_comes_back_bit_for_bit(folders, family):
    """Finding: `pickle.dumps(trace)` failed on a local closure (the model's lazy layers)."""
    model = ml.load(folders[family])
    trace = model.run(IDS)
    data = pickle.dumps(trace)
    assert len(data) < 2 * sum(trace[k].nbytes for k in ["logits", *trace.keys()]
                               if not (isinstance(k, tuple) and k[0] == "pattern")), (
        "the pickle should hold the arrays once and the model as a reference, not its weights")
    back = pickle.loads(data)
    assert_same_trace(back, trace)
    assert back.model is model, "within one process an open model of the same files is reused"


def test_a_pickled_model_is_a_reference_to_its_files(folders):
    model = ml.load(folders["llama"], dtype=np.float64, cache_layers=False, fast=False)
    data = pickle.dumps(model)
    assert len(data) < 2000, f"{len(data)} bytes: the weights went into the pickle"
    twin = copy.deepcopy(model)
    assert twin is not model
    assert (twin.dtype, twin.fast, twin.layers.cache) == (np.float64, False, False)
    assert np.array_equal(twin(IDS), model(IDS))
    assert pickle.loads(data) in (model, twin)          # an open model of the same files
    want = model(IDS)
    del model, twin
    gc.collect()
    again = pickle.loads(data)          # no model of these files is open: they are reopened
    assert again.dtype == np.float64 and again.fast is False
    assert np.array_equal(again(IDS), want)


def test_a_changed_checkpoint_is_not_reopened_silently(tmp_path):
    folder = write_checkpoint(tmp_path / "m", gpt2_config())
    data = pickle.dumps(ml.load(folder).run(IDS[:5]))
    gc.collect()
    (shard,) = folder.glob("*.safetensors")
    os.utime(shard, ns=(0, 0))
    with pytest.raises(ml.CheckpointError, match="has changed since it was pickled"):
        pickle.loads(data)
    shard.unlink()
    with pytest.raises(ml.CheckpointNotFoundError, match="is gone"):
        pickle.loads(data)


def test_deepcopy_copies_the_arrays_and_shares_the_model(folders):
    """Finding: `copy.deepcopy(trace)` failed on the pool's RLock."""
    model = ml.load(folders["gpt2"])
    trace = model.run(IDS)
    twin = copy.deepcopy(trace)
    assert twin.model is model
    assert_same_trace(twin, trace)
    twin["resid_pre", 1][...] = 0.0
    assert not np.array_equal(trace["resid_pre", 1], twin["resid_pre", 1])


def test_a_model_built_in_memory_travels_with_its_arrays():
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=2, hidden_size=32))
    back = pickle.loads(pickle.dumps(model))
    assert type(back) is HookedAutoModel and back is not model
    assert np.array_equal(back(IDS), model(IDS))
    trace = model.run(IDS)
    assert_same_trace(pickle.loads(pickle.dumps(trace)), trace)
    assert np.array_equal(copy.deepcopy(model)(IDS), model(IDS))


def run_in_worker(job: tuple) -> ml.Trace:
    """A pool worker: the model arrives pickled (a reference to its files) and the trace goes
    back pickled."""
    model, ids, names = job
    return model.run(ids, names=names)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_traces_come_back_from_a_multiprocessing_pool(folders, method):
    """Finding: a trace could not come back from a multiprocessing worker (spawn or fork)."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    models = [ml.load(folders["gpt2"]), ml.load(folders["llama"])]
    jobs = [(m, IDS[:n], names) for m in models for n, names in [(39, None), (7, {"resid_pre"})]]
    with multiprocessing.get_context(method).Pool(2) as pool:
        traces = pool.map(run_in_worker, jobs)
    for (model, ids, names), trace in zip(jobs, traces):
        assert trace.model is model
        assert_same_trace(trace, model.run(ids, names=names))


# A forked child while other threads run the model: it must finish its own run (issue 18, item 5).
FORK_PROGRAM = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    import minilens as ml

    model = ml.load(sys.argv[1])
    ids = np.arange(1, 60) % 101
    want = model(ids)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            model.run(ids)
            model(ids[:30])

    threads = [threading.Thread(target=busy) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(int(sys.argv[2])):
            pid = os.fork()
            if pid == 0:                 # the child: one run, then out without cleanup
                os._exit(0 if np.array_equal(model(ids), want) else 3)
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    print(f"fork {n}: the child did not finish within 30 s (a deadlock)")
                    sys.exit(1)
                time.sleep(0.002)
            if os.waitstatus_to_exitcode(status) != 0:
                print(f"fork {n}: the child's logits differ")
                sys.exit(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print("ok")
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is a Unix call")
def test_a_fork_while_threads_run_the_model_does_not_deadlock(folders):
    """Finding: a fork while other threads run the model deadlocked the child on the pool's RLock,
    even with OPENBLAS_NUM_THREADS=1. (With several OpenBLAS threads, plain numpy matmuls can
    deadlock a forked child too: that is OpenBLAS's, and the README says so.)"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", FORK_PROGRAM, str(folders["gpt2"]), "100"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        result.stdout + result.stderr)
