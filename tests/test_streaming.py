"""Streaming a model bigger than the memory a process may use (issue 19), and the record= presets.

A streamed model (``load(..., cache_layers=False)``) widens one layer at a time, drops it after use,
and gives back the pages of the file it read the layer from, so its float32 weights never need to
fit in memory at once. The proof here is an imposed limit: RLIMIT_DATA caps a process's private
memory (heap and private anonymous maps) but not read-only file maps, on Linux 4.7 and later. In a
subprocess under a limit of 200 MB above what the interpreter and numpy already hold, a model of
302 MB of float32 weights (150 MB stored as float16) runs streamed, and gives the same logits as
the same model run unlimited with its layers cached; run with ``cache_layers=True`` it fails with
minilens's OutOfMemoryError, which says to load with cache_layers=False. The whole file takes about
3 s on a 2-core machine.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens.errors import InputError
from minilens.loading.checkpoint import LayerParams, LazyLayers
from minilens.loading.progress import LayerProgress
from minilens.trace import RECORD_PRESETS
from random_checkpoints import llama_config, tensor_shapes, write_checkpoint

LIMIT_BYTES = 200 << 20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="RLIMIT_DATA and /proc/self/smaps are Linux's")

# The child: numpy and minilens imported and BLAS warmed up first, then the limit, then the model.
CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    import minilens as ml
    np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)     # BLAS's buffers, before
    data_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
                   if line.startswith("VmData:"))
    limit = data_kb * 1024 + int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    try:
        model = ml.load(sys.argv[1], cache_layers=sys.argv[2] == "cache")
        logits = model(np.arange(16) % model.cfg.d_vocab)
        np.save(sys.argv[4], logits)
        print(json.dumps({"ok": True}))
    except Exception as e:  # report what was raised; the test judges it
        print(json.dumps({"ok": False, "type": type(e).__name__, "message": str(e),
                          "minilens": isinstance(e, ml.MinilensError)}))
""")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """4 layers of d_model 1024, d_mlp 4096, vocab 4096: 75M weights, 302 MB in float32, stored
    as float16 (norm gains 1, matrices ~ N(0, 1/d_in), drawn in float32 to be quick)."""
    hf = llama_config(n_layers=4, d_model=1024, n_heads=8, d_mlp=4096, d_vocab=4096)
    rng = np.random.default_rng(0)
    tensors = {name: (np.ones(shape, np.float16) if len(shape) == 1 else
                      (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1]))
                      .astype(np.float16))
               for name, shape in tensor_shapes(hf).items()}
    return write_checkpoint(tmp_path_factory.mktemp("big"), hf, tensors=tensors)


def float32_bytes(folder: Path) -> int:
    ckpt = ml.load(folder, cache_layers=False).checkpoint
    return 4 * sum(int(np.prod(i.shape)) for i in ckpt.infos.values())


def run_limited(folder: Path, mode: str, out: Path) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MINILENS_PROGRESS="0")
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode, str(LIMIT_BYTES),
                           str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@linux_only
def test_the_streaming_forward_runs_under_a_limit_its_float32_weights_exceed(big, tmp_path):
    assert float32_bytes(big) > 1.4 * LIMIT_BYTES, "the model must not fit under the limit"
    result = run_limited(big, "stream", tmp_path / "logits.npy")
    assert result["ok"], (f"the streamed forward failed under the limit: {result}. Does "
                          f"LazyLayers keep layers, or the checkpoint its pages?")
    expected = ml.load(big, cache_layers=True)(np.arange(16) % 4096)
    assert np.array_equal(np.load(tmp_path / "logits.npy"), expected), (
        "the streamed pass must give the cached pass's logits bit for bit")


@linux_only
def test_the_cached_forward_under_the_same_limit_fails_with_a_minilens_error(big, tmp_path):
    result = run_limited(big, "cache", tmp_path / "logits.npy")
    assert not result["ok"], "caching every widened layer should not fit under the limit"
    assert result["minilens"] and result["type"] == "OutOfMemoryError", result
    assert "cache_layers=False" in result["message"], result["message"]


@linux_only
def test_a_streamed_pass_gives_back_the_pages_of_the_file(big):
    """Without MADV_DONTNEED, every page of the file read by the pass stays in this process's
    resident memory: 150 MB here, 16 GB for an 8B bf16 checkpoint."""
    model = ml.load(big, cache_layers=False)
    model(np.arange(16))
    file = str(big / "model.safetensors")
    resident, inside = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(file)
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1]) * 1024
    one_layer = (big / "model.safetensors").stat().st_size / 5
    assert resident < one_layer, (f"{resident / 2**20:.0f} MiB of the checkpoint file stay "
                                  f"resident after a streamed pass: are its pages given back?")


def test_progress_reports_each_layer_of_a_slow_pass_and_nothing_for_a_fast_one(small):
    model = ml.load(small, cache_layers=False)
    quiet, loud = io.StringIO(), io.StringIO()
    model.layers.progress = LayerProgress(stream=quiet)          # 3 s: this pass is faster
    model(np.arange(8))
    model.layers.progress = LayerProgress(stream=loud, after=0)
    model(np.arange(8))
    assert quiet.getvalue() == ""
    lines = loud.getvalue().splitlines()
    assert lines[0].startswith("minilens: layer 1/3")
    assert lines[-1].startswith("minilens: layer 3/3")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("small"),
                            llama_config(n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=48))


class Watched(LazyLayers):
    """LazyLayers that count, at every fetch, how many layers fetched before are still alive."""

    def __getitem__(self, l):
        self.most_alive = max(self.most_alive, sum(r() is not None for r in self.fetched))
        params = super().__getitem__(l)
        if isinstance(params, LayerParams):
            self.fetched.append(weakref.ref(params))
        return params


def test_a_streamed_model_holds_one_widened_layer_in_every_analysis(small):
    """The forward pass, attribution by head and activation patching (which reruns the model)
    each widen a layer when they need it, and drop it before the next."""
    model = ml.load(small, cache_layers=False)
    model.layers.__class__, model.layers.fetched, model.layers.most_alive = Watched, [], 0
    trace = model.run(np.arange(12))
    ml.layer_attribution(trace, 7, by="head", layer=1)
    ml.activation_patching(model, np.arange(12), np.arange(12)[::-1], target=7, contrast=9)
    assert len(model.layers.fetched) > 3 * 3, "each analysis should fetch layers again"
    assert model.layers.most_alive == 0, (
        f"{model.layers.most_alive} earlier layers were still alive when another was fetched")
    cached = ml.load(small, cache_layers=True)
    cached.layers.__class__, cached.layers.fetched, cached.layers.most_alive = Watched, [], 0
    cached.run(np.arange(12))
    cached.run(np.arange(12))
    assert cached.layers.most_alive >= 3, "the watcher must see layers that are kept"


def held_numbers(trace) -> int:
    """Numbers the trace holds besides the logits, each array counted once (resid_post l is
    resid_pre l + 1, embed is resid_pre 0), derived patterns not computed."""
    seen = {}
    for key, value in trace._store.items():
        if isinstance(value, np.ndarray) and key != ("logits", None):
            seen[(value.__array_interface__["data"][0], value.nbytes)] = value.size
    return sum(seen.values())


def test_each_preset_holds_what_the_readme_formula_says(small):
    model = ml.load(small)
    L, T, d, c = 3, 20, 32, model.cfg
    ids = np.arange(T)
    assert held_numbers(model.run(ids, record="stream")) == (L + 1) * T * d + T
    assert held_numbers(model.run(ids, record="sublayers")) == (4 * L + 1) * T * d + T
    kv = c.n_kv_heads * c.d_head
    assert held_numbers(model.run(ids, record="all")) == (
        L * T * (6 * d + 2 * kv + c.d_mlp + 2) + 2 * T * d + T)


def test_the_stream_preset_serves_the_lens_and_sublayers_layer_attribution(small):
    model = ml.load(small)
    ids = np.arange(20)
    full = model.run(ids)
    stream, sub = model.run(ids, record="stream"), model.run(ids, record="sublayers")
    assert set(stream.keys()) == {"embed", "resid_final", "scale_final",
                                  *(("resid_pre", l) for l in range(3))}
    for name in ("entropy", "kl_to_final", "target_rank"):
        assert np.array_equal(getattr(ml.logit_lens(stream), name),
                              getattr(ml.logit_lens(full), name))
    assert np.array_equal(ml.layer_attribution(sub, 5).values,
                          ml.layer_attribution(full, 5).values)
    with_mid = model.run(ids, record="stream", names={"resid_mid"})
    assert ("resid_mid", 2) in with_mid and ("attn_out", 2) not in with_mid


def test_record_must_name_a_preset(small):
    model = ml.load(small)
    with pytest.raises(InputError, match="'stream', 'sublayers', 'all'"):
        model.run([1, 2], record="resid")
    assert set(RECORD_PRESETS) == {"stream", "sublayers", "all"}
    assert model.run([1, 2], record="all").keys() == model.run([1, 2]).keys()
    batch = model.run_batch([[1, 2, 3], [4, 5, 6]], record="stream")
    assert batch[1].keys() == model.run([4, 5, 6], record="stream").keys()


def test_a_large_gguf_tensor_is_dequantized_in_pieces_to_the_same_bits(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from gguf_factories import hf_to_gguf
    from minilens.loading import gguf_file, quants
    folder = write_checkpoint(tmp_path / "hf", llama_config(n_layers=1, d_model=256, n_heads=2,
                                                            d_mlp=512, d_vocab=300))
    path = hf_to_gguf(folder, tmp_path / "m.gguf",
                      types={"token_embd": "Q8_0", "ffn_down": "Q6_K", "*": "Q4_K"})
    f = gguf_file.GGUFFile(path)
    # 1000 weights: 31 Q8_0 or 3 K-quant blocks a piece, and a shorter last piece
    monkeypatch.setattr(gguf_file, "DEQUANTIZE_PIECE", 1000)
    for name, t in f.tensors.items():
        whole = quants.dequantize(f.raw(name), t.type_id, int(np.prod(t.shape)))
        assert np.array_equal(f.dequantize(name), whole.reshape(t.shape)), name


def test_progress_counts_a_pass_from_its_first_layer_not_from_load():
    """A model loaded a while before its first pass must not report that pass as slow: the clock
    of the first pass started when the model was loaded, so `minilens patch` on SmolLM2 printed
    "layer 1/30, 6 s" for a pass that took well under a second."""
    import io
    import time

    out = io.StringIO()
    progress = LayerProgress(stream=out, after=0.2)
    time.sleep(0.3)                       # loading, tokenizing, anything before the first pass
    for l in range(3):
        progress(l, 3, 0.0)
    assert out.getvalue() == "", f"a fast first pass was reported: {out.getvalue()!r}"
